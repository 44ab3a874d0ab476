import Testing
import Foundation
import SaliencyCore
@testable import EVTOnline

/// The model-level rule's null sample by 2-fold cross-fitting on the calibration rows
/// (ModelShiftCrossFit.swift, docs/alerting.md §4).
@Suite struct ModelShiftCrossFitTests {
    // MARK: Streams

    /// Row generators: i.i.d. rows of K positive values.
    enum Null: CaseIterable {
        case lognormal, exponential, sharedFactor, gpdHeavy

        func fill(_ row: UnsafeMutableBufferPointer<Float>, _ rng: inout SplitMix64) {
            switch self {
            case .lognormal:
                for j in row.indices { row[j] = Float(Foundation.exp(0.8 * rng.normal())) }
            case .exponential:
                for j in row.indices { row[j] = Float(-Foundation.log(rng.uniform())) }
            case .sharedFactor:
                // Every filter loads 0.8 on one row factor: extremes cluster in rows.
                let f = rng.normal()
                for j in row.indices { row[j] = Float(Foundation.exp(0.8 * f + 0.6 * rng.normal())) }
            case .gpdHeavy:
                // GPD(ξ = 0.3) via the inverse CDF: a heavy tail.
                for j in row.indices { row[j] = Float((Foundation.pow(rng.uniform(), -0.3) - 1) / 0.3) }
            }
        }
    }

    struct Outcome {
        var calibration: ModelShiftCalibration?
        var falseFires = 0
        var hits = 0
        var monitored = 0
        var firstFireAfterOnset: Int?
        /// Rows of the calibration sample with ≥ r extremes under models fitted on all of it (in sample).
        var inSampleHits = 0
    }

    /// Calibrates a bank (with the cross-fit requested, as ModelEngine does), hands the held-out
    /// histogram to a tracker, then monitors `rows` rows; from `onset` on, `shift` changes rows.
    static func run(_ null: Null, filters k: Int, pot: POTConfiguration, modelERT: Double, rows: Int, seed: UInt64,
                    onset: Int? = nil, shift: ((UnsafeMutableBufferPointer<Float>, inout SplitMix64) -> Void)? = nil) throws -> Outcome {
        let bank = try FilterBank(filterCount: k, configuration: pot)
        let rule = AlertRule(window: 50, fireCount: 16, resolveBelow: 8, model: ModelShiftRule(expectedRunTime: modelERT))
        let slots = pot.tails == .both ? 2 * k : k
        var tracker = AlertTracker(filterCount: slots, rule: rule)
        bank.requestCrossFit(bins: rule.model.histogramBins)
        var rng = SplitMix64(seed: seed)
        var row = [Float](repeating: 0, count: k)
        var events: [AlertTransition] = []
        var slotBuf: [Int32] = []
        var out = Outcome()
        var calibrationRows: [Float] = []
        calibrationRows.reserveCapacity(pot.calibration * k)
        for i in 0..<(pot.calibration + rows) {
            let monitoredIndex = i - pot.calibration
            row.withUnsafeMutableBufferPointer { b in
                null.fill(b, &rng)
                if let onset, monitoredIndex >= onset { shift?(b, &rng) }
            }
            events.removeAll(keepingCapacity: true)
            if i < pot.calibration { calibrationRows.append(contentsOf: row) }
            let r = row.withUnsafeBufferPointer { bank.update($0) }
            if r.calibrated {
                let h = try #require(bank.takeCrossFit()).get()
                #expect(h.reduce(0, +) == UInt64(pot.calibration))
                #expect(tracker.calibrateModel(histogram: h, into: &events))
                continue
            }
            guard bank.isCalibrated else { continue }
            slotBuf.removeAll(keepingCapacity: true)
            slotBuf.append(contentsOf: bank.lastExtremes)
            for j in bank.lastLowerExtremes { slotBuf.append(pot.tails == .both ? Int32(k) + j : j) }
            if let cal = tracker.modelCalibration, slotBuf.count >= cal.rowThreshold { out.hits += 1 }
            slotBuf.withUnsafeBufferPointer { tracker.record(row: bank.rows, extremes: $0, into: &events) }
            out.monitored += 1
            for e in events {
                if case .modelFired = e {
                    if let onset, monitoredIndex >= onset {
                        if out.firstFireAfterOnset == nil { out.firstFireAfterOnset = monitoredIndex - onset + 1 }
                    } else {
                        out.falseFires += 1
                    }
                }
            }
        }
        out.calibration = tracker.modelCalibration
        // In sample: a bank calibrated on the same rows (no refits) counts those very rows.
        var frozenPOT = pot
        frozenPOT.refitsPerRow = 0
        let again = try FilterBank(filterCount: k, configuration: frozenPOT)
        let r0 = out.calibration?.rowThreshold ?? 1
        for pass in 0..<2 {
            for i in 0..<pot.calibration {
                let r = calibrationRows.withUnsafeBufferPointer { again.update(UnsafeBufferPointer(rebasing: $0[(i * k)..<((i + 1) * k)])) }
                if pass == 1, r.extremes + r.lowerExtremes >= r0 { out.inSampleHits += 1 }
            }
        }
        return out
    }

    // MARK: Tests

    /// The held-out histogram equals an independent numpy/scipy computation
    /// (Fixtures/gen_crossfit_reference.py): fit each fold's upper (and lower) tails on one half,
    /// count the other half's extremes per row.
    @Test(arguments: ["upper", "both"]) func histogramMatchesNumpyReference(tails: String) throws {
        struct Fixture: Decodable {
            struct Case: Decodable { let tails: String; let histogram: [UInt64] }
            let level: Double; let q: Double; let rows: Int; let filters: Int; let bins: Int
            let values: [Float]; let cases: [Case]
        }
        let url = try #require(Bundle.module.url(forResource: "crossfit_reference", withExtension: "json", subdirectory: "Fixtures"))
        let f = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
        var pot = POTConfiguration(level: f.level, q: f.q, calibration: f.rows, refitsPerRow: 0)
        pot.tails = try #require(TailSelection(rawValue: tails))
        let expected = try #require(f.cases.first { $0.tails == tails }).histogram
        let h = try f.values.withUnsafeBufferPointer {
            try FilterBank.crossFitHistogram(rows: $0, filterCount: f.filters, configuration: pot, bins: f.bins)
        }
        #expect(h == expected)
        // Through the bank's own calibration path (requested, computed in finishCalibration).
        let bank = try FilterBank(filterCount: f.filters, configuration: pot)
        bank.requestCrossFit(bins: f.bins)
        #expect(bank.crossFitRequested)
        for i in 0..<f.rows {
            f.values.withUnsafeBufferPointer { v in _ = bank.update(UnsafeBufferPointer(rebasing: v[(i * f.filters)..<((i + 1) * f.filters)])) }
        }
        #expect(try #require(bank.takeCrossFit()).get() == expected)
        #expect(bank.takeCrossFit() == nil)   // taken once
        // In-sample counts (models fitted on all rows, counted on the same rows), for the record:
        // at q = 0.01 they are close to held-out; at q = 1e-4 they are not (falseAlarmsWithinERT).
        var inSampleHits = 0
        for i in 0..<f.rows {
            let r = f.values.withUnsafeBufferPointer { v in bank.update(UnsafeBufferPointer(rebasing: v[(i * f.filters)..<((i + 1) * f.filters)])) }
            if r.extremes + r.lowerExtremes > 0 { inSampleHits += 1 }
        }
        let heldOutHits = f.rows - Int(expected[0])
        print("cross-fit \(tails): rows with ≥ 1 extreme held out \(heldOutHits)/\(f.rows), in sample \(inSampleHits)/\(f.rows)")
    }

    /// On i.i.d. streams the realised model-level false-alarm count respects the ERT bound, and
    /// the realised hit rate stays below the cross-fitted `π0`.
    @Test(arguments: Null.allCases) func falseAlarmsWithinERT(null: Null) throws {
        let k = 120, rows = 40_000, ert = 500.0
        var pot = POTConfiguration(level: 0.9, q: 1e-3, calibration: 1_000)
        pot.tails = null == .exponential ? .both : .upper
        var fires = 0, monitored = 0, hits = 0
        var worstRatio = 0.0
        for seed in UInt64(1)...2 {
            let o = try Self.run(null, filters: k, pot: pot, modelERT: ert, rows: rows, seed: seed &* 7919 &+ UInt64(Null.allCases.firstIndex(of: null)!))
            let cal = try #require(o.calibration)
            #expect(cal.source == .crossFit && cal.burnInRows == pot.calibration)
            fires += o.falseFires; monitored += o.monitored; hits += o.hits
            worstRatio = max(worstRatio, Double(o.hits) / Double(o.monitored) / cal.nullRate)
            print("\(null) seed \(seed) tails \(pot.tails): r = \(cal.rowThreshold), held-out rate \(cal.estimatedRate), π0 \(cal.nullRate), in sample \(Double(o.inSampleHits) / Double(pot.calibration)), realised \(Double(o.hits) / Double(o.monitored)), false model fires \(o.falseFires) in \(o.monitored) rows")
        }
        #expect(fires <= poissonUpperBound(Double(monitored) / ert))
        #expect(worstRatio <= 1.0)   // realised hit rate ≤ π0 (what the ARL bound needs)
    }

    /// A shift where many filters rise a little (×1.8 on 40 % of them) fires the model-level alert
    /// soon after onset, with no burn-in: the CUSUM runs from the first monitored row.
    @Test func shiftDetectedWithoutBurnIn() throws {
        let k = 200
        let pot = POTConfiguration(level: 0.9, q: 1e-3, calibration: 1_000)
        let o = try Self.run(.lognormal, filters: k, pot: pot, modelERT: 100_000, rows: 3_000, seed: 99, onset: 500) { row, _ in
            for j in stride(from: 0, to: row.count, by: 5) { row[j] *= 1.8; row[j + 1] *= 1.8 }
        }
        let delay = try #require(o.firstFireAfterOnset, "the model-level alert never fired after the shift")
        print("model-level delay after a broad small shift: \(delay) rows (false fires before onset: \(o.falseFires))")
        #expect(o.falseFires == 0)
        #expect(delay <= 200)
    }

    /// A half calibration that cannot be a calibration (too few peaks) is a clear error, and the
    /// tracker then keeps burning in.
    @Test func invalidHalfFallsBackToBurnIn() throws {
        let pot = POTConfiguration(level: 0.9, q: 1e-3, calibration: 150, minPeaks: 10)   // halves: 75 rows, 7.5 peaks
        let bank = try FilterBank(filterCount: 4, configuration: pot)
        bank.requestCrossFit(bins: 257)
        var rng = SplitMix64(seed: 3)
        var row = [Float](repeating: 0, count: 4)
        for _ in 0..<pot.calibration {
            row.withUnsafeMutableBufferPointer { Null.exponential.fill($0, &rng) }
            _ = row.withUnsafeBufferPointer { bank.update($0) }
        }
        guard case .failure(let e)? = bank.takeCrossFit() else { Issue.record("expected a cross-fit failure"); return }
        #expect(e.message.contains("half the calibration"))
        var tracker = AlertTracker(filterCount: 4, rule: AlertRule(window: 10, fireCount: 2, resolveBelow: 1, model: ModelShiftRule(burnIn: 100, expectedRunTime: 1_000)))
        var events: [AlertTransition] = []
        #expect(!tracker.calibrateModel(histogram: [1, 2], into: &events))   // wrong bin count: ignored
        for r in UInt64(0)..<100 { [Int32]().withUnsafeBufferPointer { tracker.record(row: r, extremes: $0, into: &events) } }
        #expect(tracker.modelCalibration?.source == .burnIn)
    }

    /// Snapshots written before the cross-fit (no `nullSample`, no `source`) still decode: the
    /// rule as `.crossFit` (the tracker finishes an open burn-in), the calibration as `.burnIn`.
    @Test func oldSnapshotFieldsDecode() throws {
        let oldRule = #"{"burnIn":10000,"expectedRunTime":1e7,"shiftRatio":2,"maxNullRate":0.5,"maxRowThreshold":256,"confidence":0.999}"#
        let rule = try JSONDecoder().decode(ModelShiftRule.self, from: Data(oldRule.utf8))
        #expect(rule.nullSample == .crossFit && rule.burnIn == 10_000)
        let oldCal = #"{"rowThreshold":2,"burnInRows":10000,"estimatedRate":0.01,"nullRate":0.012,"shiftedRate":0.024,"threshold":16.1}"#
        let cal = try JSONDecoder().decode(ModelShiftCalibration.self, from: Data(oldCal.utf8))
        #expect(cal.source == .burnIn && cal.rowThreshold == 2)
        // Mid-burn-in tracker state (old format): it finishes the burn-in the old way.
        var tracker = AlertTracker(filterCount: 10, rule: AlertRule(window: 10, fireCount: 2, resolveBelow: 1, model: ModelShiftRule(burnIn: 100, expectedRunTime: 1_000)))
        var events: [AlertTransition] = []
        for r in UInt64(0)..<60 { [Int32(r % 10)].withUnsafeBufferPointer { tracker.record(row: r, extremes: $0, into: &events) } }
        // Sorted keys: "nullSample" is then followed by "shiftRatio" (dictionary order varies by run).
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var json = String(decoding: try encoder.encode(tracker.state), as: UTF8.self)
        json = json.replacingOccurrences(of: #""nullSample":"cross_fit","#, with: "")
        #expect(!json.contains("nullSample"))
        var restored = try AlertTracker(state: JSONDecoder().decode(AlertTrackerState.self, from: Data(json.utf8)))
        #expect(restored.modelBurnInRows == 60)
        for r in UInt64(60)..<100 { [Int32]().withUnsafeBufferPointer { restored.record(row: r, extremes: $0, into: &events) } }
        #expect(restored.modelCalibration?.source == .burnIn)
        #expect(restored.modelCalibration?.burnInRows == 100)
    }

    /// Cost at ResNet-50 width (26,560 filters). Opt-in: SALIENCY_XFIT_BENCH=1 (release build).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["SALIENCY_XFIT_BENCH"] != nil),
          arguments: [1_000, 4_000]) func benchmarkResNet50Width(calibration: Int) throws {
        let k = 26_560
        var rng = SplitMix64(seed: 5)
        var values = [Float](repeating: 0, count: calibration * k)
        values.withUnsafeMutableBufferPointer { b in
            for i in 0..<calibration { Null.sharedFactor.fill(UnsafeMutableBufferPointer(rebasing: b[(i * k)..<((i + 1) * k)]), &rng) }
        }
        for tails in [TailSelection.upper, .both] {
            var pot = POTConfiguration(q: 1e-4, calibration: calibration)
            pot.tails = tails
            let clock = ContinuousClock()
            var h: [UInt64] = []
            let t = try clock.measure {
                h = try values.withUnsafeBufferPointer { try FilterBank.crossFitHistogram(rows: $0, filterCount: k, configuration: pot, bins: 257) }
            }
            // The bank's own calibration, for comparison.
            let bank = try FilterBank(filterCount: k, configuration: pot)
            let tc = clock.measure {
                for i in 0..<calibration { values.withUnsafeBufferPointer { v in _ = bank.updateValidated(UnsafeBufferPointer(rebasing: v[(i * k)..<((i + 1) * k)])) } }
            }
            let extra = FilterBank.crossFitTransientBytes(filterCount: k, configuration: pot) ?? -1
            print("BENCH cross-fit K=\(k) n=\(calibration) tails=\(tails): \(t) (bank calibration incl. row copies \(tc)); transient \(extra / 1_048_576) MiB, calibration buffer \(calibration * k * 4 / 1_048_576) MiB; rows with ≥ 1 extreme \(calibration - Int(h[0]))")
        }
    }
}
