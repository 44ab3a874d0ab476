import Testing
import SaliencyCore
@testable import EVTOnline

/// `checkInvariants()` holds through every phase (in every build; with `-DSALIENCY_INVARIANTS`
/// the bank also checks itself after each update), and it does trap on a broken invariant.
@Suite struct FilterBankInvariantTests {
    @Test(arguments: FilterBankGoldenTests.Scenario.allCases)
    func invariantsHoldOnTheGoldenScenarios(_ scenario: FilterBankGoldenTests.Scenario) throws {
        let bank = try FilterBankGoldenTests.makeBank(scenario)
        bank.checkInvariants()
        let restored = try FilterBank(restoring: bank.serializedState(), configuration: nil, kernels: .baseline)
        restored.checkInvariants()
        bank.refitDue()
        bank.checkInvariants()
    }

    @Test func invariantsHoldRowByRowWithFrozenFiltersAndNoBudget() throws {
        var cfg = config(calibration: 120, refits: 0, maxPeaks: 16)
        cfg.refitAfterPeaks = 3
        let bank = try FilterBank(filterCount: 19, configuration: cfg)
        var f = SyntheticFeed(seed: 61, filters: 19)
        for i in 0..<600 {
            var r = f.row()
            if i % 23 == 0 { r[4] *= 500 }
            if i == 200 { bank.setFrozen(4, true) }
            if i == 400 { bank.setFrozen(4, false) }
            feed(bank, r)
            bank.checkInvariants()
            if i % 50 == 49 { bank.refitDue(limit: 5); bank.checkInvariants() }
        }
        #expect(bank.dueCount > 0)
    }

    @Test func aBrokenQueueTraps() async {
        await #expect(processExitsWith: .failure) {
            let bank = try FilterBank(filterCount: 9, configuration: config(calibration: 100))
            var f = SyntheticFeed(seed: 62, filters: 9)
            for r in f.rows(100) { feed(bank, r) }
            bank.storage.inQueue[3] = true   // flagged, but not in the queue
            bank.checkInvariants()
        }
    }

    @Test func unorderedThresholdsTrap() async {
        await #expect(processExitsWith: .failure) {
            let bank = try FilterBank(filterCount: 9, configuration: config(calibration: 100))
            var f = SyntheticFeed(seed: 63, filters: 9)
            for r in f.rows(100) { feed(bank, r) }
            bank.storage.extD[2] = bank.storage.thrD[2] - 1
            bank.checkInvariants()
        }
    }
}
