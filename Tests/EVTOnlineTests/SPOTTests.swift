import Foundation
import SaliencyCore
import Testing
@testable import EVTOnline

@Suite struct SPOTTests {
    enum Source: String, CaseIterable { case exponential, studentT3, normal }

    func draw(_ source: Source, _ rng: inout SplitMix64) -> Double {
        switch source {
        case .exponential: rng.exponential()
        case .studentT3: rng.studentT3() // signed t: the upper tail, γ = 1/3
        case .normal: rng.normal()
        }
    }

    /// docs/method.md §6.2: on i.i.d. streams the extreme rate is within [0.5, 2]·q.
    @Test(arguments: Source.allCases, [1, 2] as [UInt64])
    func alarmRateIsNearQ(source: Source, seed: UInt64) throws {
        let q = 1e-3
        var spot = try SPOT(configuration: POTConfiguration(level: 0.98, q: q, calibration: 4000, maxPeaks: 256,
                                                             minPeaks: 10, refitAfterPeaks: 32))
        var rng = SplitMix64(seed: seed &* 1000 &+ UInt64(source.hashValue & 0xff))
        for _ in 0..<4000 { #expect(spot.step(draw(source, &rng)) == .calibrating) }
        #expect(!spot.isCalibrating && spot.threshold != nil && spot.extremeThreshold != nil)
        let stream = 200_000
        var extremes = 0
        for _ in 0..<stream where spot.step(draw(source, &rng)) == .extreme { extremes += 1 }
        let rate = Double(extremes) / Double(stream)
        #expect(rate >= 0.5 * q && rate <= 2 * q, "\(source) seed \(seed): rate \(rate) for q = \(q)")
        #expect(spot.counts.extremes == extremes)
        // Default policy .censor: extremes count in n and N_t.
        #expect(spot.counts.n == 4000 + stream)
        #expect(spot.counts.normal + spot.counts.peaks - spotCalibrationPeaks(4000, 0.98) == stream)
    }

    /// Smaller risk, longer stream (exponential only, to keep the suite fast).
    @Test func alarmRateAtQ1e4() throws {
        let q = 1e-4
        var spot = try SPOT(configuration: POTConfiguration(level: 0.98, q: q, calibration: 5000, refitAfterPeaks: 64))
        var rng = SplitMix64(seed: 31)
        for _ in 0..<5000 { _ = spot.step(rng.exponential()) }
        let stream = 1_000_000
        var extremes = 0
        for _ in 0..<stream where spot.step(rng.exponential()) == .extreme { extremes += 1 }
        let rate = Double(extremes) / Double(stream)
        #expect(rate >= 0.5 * q && rate <= 2 * q, "rate \(rate) for q = \(q)")
    }

    func spotCalibrationPeaks(_ n: Int, _ level: Double) -> Int {
        // With continuous data exactly (n − 1) − ⌊(n − 1)·level⌋ values lie above the linear quantile.
        (n - 1) - Int((Double(n - 1) * level).rounded(.down))
    }

    @Test func calibrationUsesNumpysLinearQuantile() throws {
        let sample = Reference.shared.quantiles.sample // 1001 values
        var spot = try SPOT(configuration: POTConfiguration(level: 0.9, q: 1e-3, calibration: sample.count))
        for (i, x) in sample.enumerated() {
            #expect(spot.threshold == nil || i == sample.count)
            #expect(spot.step(x) == .calibrating)
        }
        let numpy = Reference.shared.quantiles.values[Reference.shared.quantiles.levels.firstIndex(of: 0.9)!]
        #expect(relativeError(spot.threshold!, numpy) <= 1e-15)
        let t = spot.threshold!
        let expectedPeaks = sample.filter { $0 > t }.map { $0 - t }
        #expect(spot.counts.peaks == expectedPeaks.count && spot.counts.n == sample.count)
        #expect(spot.peaks == expectedPeaks) // no eviction: ring order is arrival order
        var fitter = GrimshawFitter(capacity: expectedPeaks.count)
        let batch = expectedPeaks.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
        #expect(spot.fit == batch)
        let z = POT.extremeThreshold(threshold: t, gpd: batch.gpd, q: 1e-3, n: Double(sample.count), peaks: Double(expectedPeaks.count))
        #expect(spot.extremeThreshold == z)
    }

    @Test func discardedExtremesAreNotAddedToTheModel() throws {
        var spot = try SPOT(configuration: POTConfiguration(level: 0.9, q: 1e-3, calibration: 1000), extremes: .discard)
        var rng = SplitMix64(seed: 3)
        for _ in 0..<1000 { _ = spot.step(rng.exponential()) }
        let before = spot.counts
        let peaksBefore = spot.peaks
        #expect(spot.step(spot.extremeThreshold! + 1) == .extreme)
        #expect(spot.counts.n == before.n && spot.counts.peaks == before.peaks && spot.counts.extremes == 1)
        #expect(spot.peaks == peaksBefore && spot.censoredPeaks.isEmpty)
        #expect(spot.step(spot.threshold! + 1e-9) == .peak)
        #expect(spot.counts.n == before.n + 1 && spot.counts.peaks == before.peaks + 1)
        #expect(spot.step(spot.threshold! - 1) == .normal)
        #expect(spot.counts.n == before.n + 2 && spot.counts.normal == 1)
    }

    /// The default policy: an extreme's value is not learned, only that it exceeded z_q.
    @Test func censoredExtremesEnterAsCensoredPeaks() throws {
        var spot = try SPOT(configuration: POTConfiguration(level: 0.9, q: 1e-3, calibration: 1000, refitAfterPeaks: 1))
        #expect(spot.extremePolicy == .censor)
        var rng = SplitMix64(seed: 3)
        for _ in 0..<1000 { _ = spot.step(rng.exponential()) }
        let before = spot.counts
        let t = spot.threshold!, z = spot.extremeThreshold!
        #expect(spot.step(z + 1e6) == .extreme) // the magnitude must not matter
        #expect(spot.counts.n == before.n + 1 && spot.counts.peaks == before.peaks + 1 && spot.counts.extremes == 1)
        #expect(spot.censoredPeaks == [z - t])
        // refitAfterPeaks = 1: refitted with the censored peak; equals a batch censored fit.
        var fitter = GrimshawFitter(capacity: 256)
        let batch = spot.peaks.withUnsafeBufferPointer { p in
            spot.censoredPeaks.withUnsafeBufferPointer { c in fitter.fit(p, censored: c, minPeaks: 10) }
        }
        #expect(spot.fit == batch && batch.censoredCount == 1)
        // Another extreme of a different size changes the model identically.
        var other = try SPOT(configuration: POTConfiguration(level: 0.9, q: 1e-3, calibration: 1000, refitAfterPeaks: 1))
        rng = SplitMix64(seed: 3)
        for _ in 0..<1000 { _ = other.step(rng.exponential()) }
        #expect(other.step(z + 1e-3) == .extreme)
        #expect(other.fit == spot.fit && other.extremeThreshold == spot.extremeThreshold)
    }

    /// Why `.censor` is the default: literally discarding extremes truncates the peaks at z_q
    /// and, with refits, the threshold runs away (measured 6–11·q; see docs/statistics.md).
    @Test func discardingExtremesWithRefitsInflatesTheRate() throws {
        let q = 1e-3
        var spot = try SPOT(configuration: POTConfiguration(level: 0.98, q: q, calibration: 4000, refitAfterPeaks: 32),
                            extremes: .discard)
        var rng = SplitMix64(seed: 1)
        for _ in 0..<4000 { _ = spot.step(rng.exponential()) }
        var extremes = 0
        for _ in 0..<200_000 where spot.step(rng.exponential()) == .extreme { extremes += 1 }
        #expect(Double(extremes) / 200_000 > 3 * q)
        #expect(spot.fit!.gpd.shape < -0.3) // the true shape is 0
    }

    /// Forces the ring's eviction path: more peaks than maxPeaks; the refit then equals a
    /// batch fit of exactly the ring's contents, and N_t keeps counting.
    @Test func ringEvictsOldestAndRefitEqualsBatch() throws {
        let config = POTConfiguration(level: 0.9, q: 1e-3, calibration: 1000, maxPeaks: 64, minPeaks: 10, refitAfterPeaks: 8)
        var spot = try SPOT(configuration: config, extremes: .discard)
        var rng = SplitMix64(seed: 4)
        var raw: [Double] = []
        for _ in 0..<1000 { let x = rng.exponential(); raw.append(x); _ = spot.step(x) }
        #expect(spot.peaks.count == 64) // ~100 calibration peaks, 64 kept
        let t = spot.threshold!
        var allPeaks = raw.filter { $0 > t }.map { $0 - t }
        #expect(spot.counts.peaks == allPeaks.count)
        #expect(spot.peaks.sorted() == Array(allPeaks.suffix(64)).sorted())
        var added = 0
        while added < 40 {
            let x = rng.exponential()
            switch spot.step(x) {
            case .peak: allPeaks.append(x - t); added += 1
            case .extreme, .normal, .calibrating: break
            }
        }
        #expect(spot.counts.peaks == allPeaks.count)
        #expect(spot.peaks.sorted() == Array(allPeaks.suffix(64)).sorted())
        spot.refit()
        var fitter = GrimshawFitter(capacity: 64)
        // Same values in ring order: bit-identical; in arrival order: equal up to summation order.
        let exact = spot.peaks.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
        #expect(spot.fit == exact)
        let batch = Array(allPeaks.suffix(64)).withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
        #expect(relativeError(spot.fit!.gpd.shape, batch.gpd.shape) <= 1e-6)
        #expect(relativeError(spot.fit!.logLikelihood, batch.logLikelihood) <= 1e-12)
    }

    @Test func withoutPeaksNothingIsExtremeAndNothingIsNaN() throws {
        // A constant calibration has no values above its threshold: no fit, no z_q.
        var spot = try SPOT(configuration: POTConfiguration(level: 0.9, q: 1e-3, calibration: 200, minPeaks: 10))
        for _ in 0..<200 { _ = spot.step(1) }
        #expect(spot.threshold == 1 && spot.extremeThreshold == nil)
        #expect(spot.fit?.method == .insufficientPeaks)
        #expect(spot.step(1e9) == .peak) // not extreme: there is no fit to judge it by
        for i in 0..<20 { _ = spot.step(1 + Double(i)) }
        #expect(spot.fit?.method != .insufficientPeaks && spot.extremeThreshold != nil)
        #expect(spot.extremeThreshold!.isFinite)
    }

    @Test func invalidConfigurationThrows() {
        #expect(throws: SaliencyError.self) { try SPOT(configuration: POTConfiguration(level: 0.9, q: 0.2)) }
        #expect(throws: SaliencyError.self) {
            try SPOT(configuration: POTConfiguration(level: 0.9, q: 1e-3, calibration: 200, driftWindow: 150))
        }
    }

    /// DSPOT follows a trend that would flood plain SPOT with extremes.
    @Test func dspotFollowsDrift() throws {
        func run(drift: Int) throws -> Int {
            var spot = try SPOT(configuration: POTConfiguration(level: 0.98, q: 1e-3, calibration: 3000, driftWindow: drift))
            var rng = SplitMix64(seed: 8)
            var extremes = 0
            for i in 0..<60_000 where spot.step(1e-3 * Double(i) + rng.normal()) == .extreme { extremes += 1 }
            return extremes
        }
        let plain = try run(drift: 0), drifting = try run(drift: 50)
        #expect(plain > 1000, "SPOT extremes \(plain)")
        #expect(drifting < 200, "DSPOT extremes \(drifting)")
        #expect(plain > 20 * drifting)
    }
}

@Suite struct SPOTPreconditionTests {
    @Test func nonFiniteValueTraps() async {
        await #expect(processExitsWith: .failure) {
            var spot = try SPOT(configuration: POTConfiguration())
            _ = spot.step(.nan)
        }
    }
}
