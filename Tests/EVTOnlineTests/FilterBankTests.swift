import Testing
import Foundation
import SaliencyCore
@testable import EVTOnline

/// Synthetic rows: filter j draws from one of three tail families, scaled per filter.
struct SyntheticFeed {
    var rng: SplitMix64
    let k: Int
    init(seed: UInt64, filters: Int) { rng = SplitMix64(seed: seed); k = filters }
    mutating func value(_ j: Int) -> Float {
        let scale = 0.5 + Double(j % 7) * 0.25
        switch j % 3 {
        case 0: return Float(scale * exp(0.5 * rng.normal()))                        // lognormal
        case 1: return Float(scale * (pow(rng.uniform(), -0.25) - 1) / 0.25)         // GPD(0.25) tail
        default: return Float(scale * abs(rng.normal()))                              // half-normal
        }
    }
    mutating func row() -> [Float] { (0..<k).map { value($0) } }
    mutating func rows(_ n: Int) -> [[Float]] { (0..<n).map { _ in row() } }
}

func numpyLinearQuantile(_ xs: [Float], _ p: Double) -> Double {
    let s = xs.map(Double.init).sorted()
    let pos = p * Double(s.count - 1)
    let lo = Int(pos), hi = min(lo + 1, s.count - 1)
    return s[lo] + (pos - Double(lo)) * (s[hi] - s[lo])
}

func config(calibration: Int = 400, level: Double = 0.9, q: Double = 1e-3, refits: Double = 1e6, maxPeaks: Int = 256) -> POTConfiguration {
    var c = POTConfiguration()
    c.calibration = calibration
    c.level = level
    c.q = q
    c.refitsPerRow = refits
    c.maxPeaks = maxPeaks
    return c
}

@discardableResult
func feed(_ bank: FilterBank, _ row: [Float]) -> FilterBank.RowResult {
    row.withUnsafeBufferPointer { bank.update($0) }
}

@Suite struct FilterBankTests {
    @Test func rejectsInvalidRowsWithoutTouchingState() throws {
        let k = 21
        let bank = try FilterBank(filterCount: k, configuration: config(calibration: 100))
        var f = SyntheticFeed(seed: 1, filters: k)
        for r in f.rows(150) { feed(bank, r) }
        let before = (0..<k).map { bank.report(filter: $0) }
        let rowsBefore = bank.rows
        var bad = f.row(); bad[3] = .nan
        #expect(feed(bank, bad).rejected == .nonFinite)
        bad = f.row(); bad[20] = .infinity
        #expect(feed(bank, bad).rejected == .nonFinite)
        bad = f.row(); bad[0] = -.infinity
        #expect(feed(bank, bad).rejected == .nonFinite)
        bad = f.row(); bad[9] = -1e-3
        #expect(feed(bank, bad).rejected == .negative)
        #expect(feed(bank, Array(f.row().dropLast())).rejected == .wrongWidth)
        #expect(feed(bank, f.row() + [1]).rejected == .wrongWidth)
        var negZero = f.row(); negZero[5] = -0.0
        #expect(bank.validate(negZero.withUnsafeBufferPointer { $0 }) == nil)
        #expect(bank.rows == rowsBefore)
        #expect(bank.rejected == [.nonFinite: 3, .negative: 1, .wrongWidth: 2])
        #expect((0..<k).map { bank.report(filter: $0) } == before)
    }

    @Test func rejectedRowsDuringCalibrationDoNotCount() throws {
        let bank = try FilterBank(filterCount: 9, configuration: config(calibration: 100))
        var f = SyntheticFeed(seed: 2, filters: 9)
        for _ in 0..<10 { var r = f.row(); r[1] = .nan; feed(bank, r) }
        #expect(bank.phase == .calibrating(seen: 0, of: 100))
        for r in f.rows(99) { feed(bank, r) }
        #expect(!bank.isCalibrated)
        #expect(feed(bank, f.row()).calibrated)
        #expect(bank.isCalibrated)
    }

    /// docs/method.md §6.3: feeding the reference one row at a time equals a one-shot batch fit.
    @Test(arguments: [0.9, 0.98])
    func streamingCalibrationEqualsOneShotFit(level: Double) throws {
        let k = 30, n = 600
        let bank = try FilterBank(filterCount: k, configuration: config(calibration: n, level: level))
        var f = SyntheticFeed(seed: 3, filters: k)
        let ref = f.rows(n)
        for r in ref { feed(bank, r) }
        #expect(bank.isCalibrated)
        var fitter = GrimshawFitter(capacity: n)
        for j in 0..<k {
            let col = ref.map { $0[j] }
            let t = numpyLinearQuantile(col, level)
            let peaks = col.map(Double.init).filter { $0 > t }.map { $0 - t }
            let rep = bank.report(filter: j)
            #expect(rep.threshold == t)
            #expect(rep.peaks == UInt64(peaks.count))
            #expect(rep.n == UInt64(n))
            // Batch fit on the same peaks (as Float, the ring's storage) gives the same model.
            let fl = peaks.suffix(256).map { Float($0) }
            let fit = fl.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
            #expect(rep.shape == fit.gpd.shape)
            #expect(rep.scale == fit.gpd.scale)
            let z = POT.extremeThreshold(threshold: t, gpd: fit.gpd, q: 1e-3, n: Double(n), peaks: Double(peaks.count))
            #expect(rep.extremeThreshold == max(z, t))
            // Moments: two-pass batch values.
            let mean = col.reduce(0.0) { $0 + Double($1) } / Double(n)
            let varr = col.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(n - 1)
            #expect(abs(rep.mean - mean) <= 1e-12 * abs(mean))
            #expect(abs(rep.standardDeviation - varr.squareRoot()) <= 1e-12 * varr.squareRoot())
        }
        // Ranking of fresh rows equals ranking by the batch formula.
        for row in f.rows(20) {
            let top = row.withUnsafeBufferPointer { bank.top($0, k: k, by: .pot) }
            #expect(top.count == k)
            #expect(Set(top.map(\.filter)).count == k)
            let expected = (0..<k).map { j in (j, POT.score(p: bank.tailProbability(filter: j, value: row[j]))) }
            for (a, b) in zip(top, top.dropFirst()) { #expect(a.score >= b.score) }
            for e in top { #expect(e.score == expected[e.filter].1) }
        }
    }

    /// Above-threshold filters always outrank below-threshold ones; every filter gets a score.
    @Test func everyFilterRanksAndAboveThresholdComesFirst() throws {
        let k = 40
        let bank = try FilterBank(filterCount: k, configuration: config(calibration: 300))
        var f = SyntheticFeed(seed: 4, filters: k)
        for r in f.rows(300) { feed(bank, r) }
        for row in f.rows(30) {
            let top = row.withUnsafeBufferPointer { bank.top($0, k: k, by: .pot) }
            #expect(top.count == k)
            let above = top.map { Double(row[$0.filter]) > bank.report(filter: $0.filter).threshold }
            if let firstBelow = above.firstIndex(of: false) {
                #expect(!above[firstBelow...].contains(true))
            }
            for e in top { #expect(e.score.isFinite && e.score >= 0) }
        }
    }

    /// A light tail's fitted endpoint is underestimated from finite data; a value beyond it must
    /// not outrank a genuinely rare value of a heavy-tailed filter for that reason alone, yet it
    /// must rank above ordinary values (not last, not NaN: published defect 3).
    @Test func beyondEndpointOfLightTailDoesNotOutrankRareHeavyTailValue() throws {
        let n = 2000
        let bank = try FilterBank(filterCount: 3, configuration: config(calibration: n))
        var rng = SplitMix64(seed: 5)
        for _ in 0..<n {
            let light = Float(rng.uniform())                             // uniform: γ = −1, endpoint 1
            let heavy = Float(pow(rng.uniform(), -0.5) - 1)              // Pareto-like, γ = 0.5
            let plain = Float(rng.uniform())
            feed(bank, [light, heavy, plain])
        }
        let lightRep = bank.report(filter: 0)
        // Heavy tail at its (1 − 1e-5) quantile: (1e-5)^(−0.5) − 1 ≈ 315.
        let row: [Float] = [1.5, 315, 0.5]
        let top = row.withUnsafeBufferPointer { bank.top($0, k: 3, by: .pot) }
        #expect(top.map(\.filter) == [1, 0, 2])
        #expect(top[1].score.isFinite)
        #expect(top[1].score > top[2].score)
        let pBeyond = bank.tailProbability(filter: 0, value: 1.5)
        let rate = Double(lightRep.peaks) / Double(lightRep.n)
        if lightRep.shape < 0 { #expect(pBeyond == rate / (Double(lightRep.peaks) + 1)) }
        #expect(pBeyond > 0)
    }

    @Test func extremesAreReportedAndNotAbsorbed() throws {
        let k = 12
        let bank = try FilterBank(filterCount: k, configuration: config(calibration: 300))
        var f = SyntheticFeed(seed: 6, filters: k)
        for r in f.rows(300) { feed(bank, r) }
        let before = (0..<k).map { bank.report(filter: $0) }
        var row = f.row()
        row[4] = Float(before[4].extremeThreshold * 10 + 1)
        row[7] = Float(before[7].extremeThreshold * 10 + 1)
        let res = feed(bank, row)
        #expect(res.extremes >= 2)
        let ex = Array(bank.lastExtremes)
        #expect(ex.contains(4) && ex.contains(7))
        let after4 = bank.report(filter: 4)
        #expect(after4.extremes == 1)
        #expect(after4.n == before[4].n + 1)          // counted, as a censored peak
        #expect(after4.peaks == before[4].peaks + 1)
        // Its size is not learned: a 10⁶× larger extreme leaves the same state.
        let twin = try FilterBank(filterCount: k, configuration: config(calibration: 300))
        var f2 = SyntheticFeed(seed: 6, filters: k)
        for r in f2.rows(300) { feed(twin, r) }
        var row2 = row
        row2[4] = row[4] * 1e6
        feed(twin, row2)
        twin.refit(filter: 4); bank.refit(filter: 4)
        #expect(twin.report(filter: 4) == bank.report(filter: 4))
        let m = bank.moments(4)
        #expect(abs(m.mean - before[4].mean) < 1e-6 * max(1, abs(before[4].mean)))
    }

    /// Streaming z-score moments equal a two-pass computation over every absorbed (non-extreme) value.
    @Test func momentsMatchTwoPassOverAbsorbedValues() throws {
        let k = 16, n = 200
        let bank = try FilterBank(filterCount: k, configuration: config(calibration: n))
        var f = SyntheticFeed(seed: 7, filters: k)
        var absorbed = [[Double]](repeating: [], count: k)
        for r in f.rows(n) { feed(bank, r); for j in 0..<k { absorbed[j].append(Double(r[j])) } }
        for i in 0..<777 {
            var r = f.row()
            if i % 50 == 0 { r[2] = 1e6 }   // extreme: excluded
            feed(bank, r)
            let ex = Set(bank.lastExtremes.map(Int.init))
            for j in 0..<k where !ex.contains(j) { absorbed[j].append(Double(r[j])) }
        }
        for j in 0..<k {
            let xs = absorbed[j]
            let mean = xs.reduce(0, +) / Double(xs.count)
            let sd = (xs.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(xs.count - 1)).squareRoot()
            let m = bank.moments(j)
            #expect(abs(m.mean - mean) <= 2e-6 * abs(mean), "filter \(j)")
            #expect(abs(m.standardDeviation - sd) <= 2e-5 * sd, "filter \(j)")
            #expect(bank.report(filter: j).n == UInt64(n + 777))   // every valid row counts in n
        }
    }

    /// The documented lag bound: a due filter is refit within ⌈K/r⌉ + 1 rows, and every refit
    /// equals a from-scratch fit on the ring as tracked independently here: every m-th peak since
    /// the last fit (m = the ring sampling stride), newest `maxPeaks` kept. `N_t` counts every peak.
    @Test(arguments: [1, 4])
    func budgetedRefitsRespectTheLagBoundAndEqualFullRefits(stride m: Int) throws {
        let k = 60, n = 200
        var cfg = config(calibration: n, refits: 0.5, maxPeaks: 32)
        cfg.refitAfterPeaks = 4
        cfg.peakStride = m
        let bank = try FilterBank(filterCount: k, configuration: cfg)
        #expect(bank.peakStride == m)
        let bound = try #require(bank.maxRefitLagRows)
        #expect(bound == 121)
        var f = SyntheticFeed(seed: 8, filters: k)
        for r in f.rows(n) { feed(bank, r) }
        // Rebuild the calibration peaks independently (calibration keeps every peak).
        var f2 = SyntheticFeed(seed: 8, filters: k)
        let ref = f2.rows(n)
        var peaks = [[Float]](repeating: [], count: k)
        var allPeaks = [UInt64](repeating: 0, count: k)
        for j in 0..<k {
            let t = bank.report(filter: j).threshold
            peaks[j] = ref.map { $0[j] }.filter { Double($0) > t }.map { Float(Double($0) - t) }
            allPeaks[j] = UInt64(peaks[j].count)
        }
        var since = [Int](repeating: 0, count: k)
        var dueSince = [Int?](repeating: nil, count: k)
        var maxLag = 0
        var fitter = GrimshawFitter(capacity: 64)
        var checkedRefits = 0
        for i in 0..<3000 {
            let row = f.row()
            let before = (0..<k).map { bank.report(filter: $0).peaksSinceFit }
            let censorAt = (0..<k).map { j -> Double in let r = bank.report(filter: j); return r.extremeThreshold - r.threshold }
            feed(bank, row)
            let ex = Set(bank.lastExtremes.map(Int.init))
            for j in 0..<k {
                let rep = bank.report(filter: j)
                let t = rep.threshold
                if Double(row[j]) > t {
                    allPeaks[j] += 1
                    since[j] += 1
                    if since[j] % m == 0 {
                        peaks[j].append(ex.contains(j) ? -Float(censorAt[j]) : Float(Double(row[j]) - t))
                    }
                }
                #expect(rep.peaks == allPeaks[j], "N_t counts every peak: filter \(j) row \(i)")
                if rep.due, dueSince[j] == nil { dueSince[j] = i }
                if !rep.due, let s = dueSince[j] {
                    maxLag = max(maxLag, i - s)
                    dueSince[j] = nil
                }
                if rep.peaksSinceFit == 0 && before[j] + (Double(row[j]) > t ? 1 : 0) > 0 {   // refit in this row
                    since[j] = 0
                    let last = Array(peaks[j].suffix(32))
                    let obs = last.filter { $0.sign == .plus }, cens = last.filter { $0.sign == .minus }.map { -$0 }
                    let fit = obs.withUnsafeBufferPointer { o in cens.withUnsafeBufferPointer { c in fitter.fit(o, censored: c, minPeaks: cfg.minPeaks) } }
                    #expect(rep.shape == fit.gpd.shape && rep.scale == fit.gpd.scale, "filter \(j) row \(i)")
                    #expect(rep.peaksInRing == last.count)
                    checkedRefits += 1
                }
                #expect(rep.peaksSinceFit == since[j])
            }
        }
        #expect(checkedRefits > 100)
        #expect(maxLag <= bound)
        #expect(maxLag > 0)
    }

    /// The automatic stride makes the ring span about one refit period at full load.
    @Test func automaticStrideSpansOneRefitPeriod() throws {
        var c = POTConfiguration()
        #expect(c.effectiveStride(filterCount: 26_560) == 32)    // 0.1·26560/(0.25·256) = 41.5
        c.level = 0.98
        #expect(c.effectiveStride(filterCount: 26_560) == 8)     // 8.3
        c.level = 0.9
        #expect(c.effectiveStride(filterCount: 400) == 1)        // 0.6: every peak
        c.refitsPerRow = 0
        #expect(c.effectiveStride(filterCount: 26_560) == 1)     // no budget: nothing to span
        c.peakStride = 16
        #expect(c.effectiveStride(filterCount: 10) == 16)        // explicit wins
        c.peakStride = 3
        #expect(throws: SaliencyError.self) { try c.validate() }
        c.peakStride = -1
        #expect(throws: SaliencyError.self) { try c.validate() }
    }

    /// The vector kernels (AVX2 where the CPU has it, SSE2 baseline) leave bit-identical state,
    /// on a width that is not a multiple of 8, with extremes, frozen filters and a stride. The two
    /// banks run side by side, row by row, in one process: the variant is each bank's own.
    @Test func kernelsAreBitIdenticalAcrossInstructionSets() throws {
        let k = 203, n = 300
        var cfg = config(calibration: n, q: 1e-3, refits: 0.3)
        cfg.peakStride = 2
        cfg.refitAfterPeaks = 8
        let base = try FilterBank(filterCount: k, configuration: cfg, kernels: .baseline)
        let best = try FilterBank(filterCount: k, configuration: cfg, kernels: .best)
        #expect(base.kernels == .baseline && best.kernels == .best)
        var f = SyntheticFeed(seed: 41, filters: k)
        for r in f.rows(n) { feed(base, r); feed(best, r) }
        var extremes = 0
        for i in 0..<1500 {
            var r = f.row()
            if i % 97 == 0 { r[5] *= 1000; r[202] *= 1000; r[131] = 0 }
            if i == 400 { for b in [base, best] { b.setFrozen(17, true); b.setFrozen(200, true) } }
            if i == 900 { for b in [base, best] { b.setFrozen(17, false) } }
            let a = feed(base, r), b = feed(best, r)
            #expect(a == b, "row \(i)")
            #expect(Array(base.lastExtremes) == Array(best.lastExtremes), "row \(i)")
            extremes += a.extremes
        }
        #expect(extremes > 15)
        #expect(base.serializedState() == best.serializedState())
        #if arch(x86_64)
        #expect(FilterBank.Kernels.baseline.isa == "sse2")
        #expect(["sse2", "avx2"].contains(FilterBank.Kernels.best.isa))
        #expect(FilterBank.kernelISA == FilterBank.Kernels.best.isa)
        #endif
        // A restored bank takes the variant it is given, and continues identically.
        let restored = try FilterBank(restoring: best.serializedState(), configuration: cfg, kernels: .baseline)
        #expect(restored.kernels == .baseline)
        for r in f.rows(200) { #expect(feed(restored, r) == feed(best, r)) }
        #expect(restored.serializedState() == best.serializedState())
    }

    /// Two threads, two banks, different variants, at the same time: nothing is process-wide.
    @Test func banksWithDifferentKernelsRunConcurrently() async throws {
        let k = 77
        let cfg = config(calibration: 200, refits: 0.5)
        let states = try await withThrowingTaskGroup(of: [UInt8].self) { group in
            for kernels in [FilterBank.Kernels.baseline, .best, .baseline, .best] {
                group.addTask {
                    let bank = try FilterBank(filterCount: k, configuration: cfg, kernels: kernels)
                    var f = SyntheticFeed(seed: 43, filters: k)
                    for r in f.rows(1200) { feed(bank, r) }
                    return bank.serializedState()
                }
            }
            var all: [[UInt8]] = []
            for try await s in group { all.append(s) }
            return all
        }
        #expect(states.count == 4 && Set(states).count == 1)
    }

    @Test func refitDueAndOnDemandRefits() throws {
        var cfg = config(calibration: 200, refits: 0)
        cfg.refitAfterPeaks = 2
        let bank = try FilterBank(filterCount: 10, configuration: cfg)
        #expect(bank.maxRefitLagRows == nil)
        var f = SyntheticFeed(seed: 9, filters: 10)
        for r in f.rows(400) { feed(bank, r) }
        let due = bank.dueCount
        #expect(due > 0)
        bank.refit(filter: 0)
        #expect(!bank.report(filter: 0).due)
        let done = bank.refitDue()
        #expect(done == due - 1 || done == due)
        #expect(bank.dueCount == 0)
    }

    @Test func zScoreRankingUsesMoments() throws {
        let bank = try FilterBank(filterCount: 3, configuration: config(calibration: 100))
        var rng = SplitMix64(seed: 10)
        for _ in 0..<100 { feed(bank, [Float(1 + 0.1 * rng.normal()).magnitude, Float(10 + rng.normal()).magnitude, Float(rng.uniform())]) }
        let row: [Float] = [1.5, 12, 0.5]
        let top = row.withUnsafeBufferPointer { bank.top($0, k: 3, by: .zscore) }
        #expect(top.first?.filter == 0)   // 5σ beats 2σ
        for e in top {
            let m = bank.moments(e.filter)
            #expect(abs(e.score - (Double(row[e.filter]) - m.mean) / m.standardDeviation) < 1e-9)
        }
    }

    /// A frozen (alerting) filter keeps its tail model through a persistent shift; unfrozen, it learns again.
    @Test func frozenFiltersDoNotLearnTheShift() throws {
        let k = 6
        let bank = try FilterBank(filterCount: k, configuration: config(calibration: 300, refits: 1e6))
        var f = SyntheticFeed(seed: 30, filters: k)
        for r in f.rows(300) { feed(bank, r) }
        bank.setFrozen(2, true)
        let before = bank.report(filter: 2)
        for _ in 0..<400 { var r = f.row(); r[2] *= 5; r[3] *= 5; feed(bank, r) }
        let frozen = bank.report(filter: 2), learning = bank.report(filter: 3)
        #expect(frozen.shape == before.shape && frozen.scale == before.scale && frozen.extremeThreshold == before.extremeThreshold)
        #expect(frozen.peaks > before.peaks && frozen.n == before.n + 400)   // counted, not learned
        #expect(learning.peaksSinceFit < 32 && bank.refitCount > UInt64(k))
        bank.setFrozen(2, false)
        for _ in 0..<200 { var r = f.row(); r[2] *= 5; feed(bank, r) }
        #expect(bank.report(filter: 2).extremeThreshold != before.extremeThreshold)
    }

    /// DSPOT: the first d calibration rows seed each window, the rest calibrate as residuals.
    @Test func driftCalibrationUsesResiduals() throws {
        let k = 5, n = 400, d = 20
        var cfg = config(calibration: n)
        cfg.driftWindow = d
        let bank = try FilterBank(filterCount: k, configuration: cfg)
        var f = SyntheticFeed(seed: 40, filters: k)
        let ref = f.rows(n)
        for r in ref { feed(bank, r) }
        for j in 0..<k {
            let col = ref.map { $0[j] }
            var window = Array(col[0..<d]).map(Double.init)
            var resid: [Float] = []
            for i in d..<n {
                resid.append(Float(Double(col[i]) - window.reduce(0, +) / Double(d)))
                window.removeFirst(); window.append(Double(col[i]))
            }
            let rep = bank.report(filter: j)
            #expect(rep.threshold == numpyLinearQuantile(resid, 0.9))
            #expect(rep.n == UInt64(n - d))
            #expect(abs(rep.driftMean! - window.reduce(0, +) / Double(d)) < 1e-9)
            let mean = col.reduce(0.0) { $0 + Double($1) } / Double(n)
            #expect(abs(rep.mean - mean) < 1e-9 * abs(mean))   // z-score moments stay on raw values
        }
        #expect(try FilterBank(filterCount: 1, configuration: { var c = config(calibration: 130); c.driftWindow = 30; return c }()).filterCount == 1)
        #expect(throws: SaliencyError.self) { try FilterBank(filterCount: 1, configuration: { var c = config(calibration: 100); c.driftWindow = 30; return c }()) }
    }

    /// A slow trend makes plain SPOT alarm on everything; DSPOT keeps the rate near q.
    @Test func driftKeepsTheAlarmRateOnATrend() throws {
        var rates: [Int: Double] = [:]
        for d in [0, 50] {
            var cfg = config(calibration: 2000, level: 0.98, q: 1e-3)
            cfg.driftWindow = d
            let bank = try FilterBank(filterCount: 4, configuration: cfg)
            var rng = SplitMix64(seed: 41)
            let rows = 20_000
            var extremes = 0
            for i in 0..<(2000 + rows) {
                let trend = 1 + 6 * Double(i) / Double(2000 + rows)   // +6σ over the run
                let r = (0..<4).map { _ in Float(max(0, trend + rng.normal())) }
                feed(bank, r)
                if i >= 2000 { extremes += bank.lastExtremes.count }
            }
            rates[d] = Double(extremes) / Double(rows * 4)
        }
        print("extreme rate under a +6σ trend: SPOT \(rates[0]!), DSPOT(d=50) \(rates[50]!) (q = 1e-3)")
        #expect(rates[0]! > 4 * 1e-3)                // the trend leaves plain SPOT behind…
        #expect(rates[50]! < 2 * 1e-3)               // …DSPOT follows it
        #expect(rates[0]! > 4 * rates[50]!)
    }

    /// The DSPOT (scalar) pass samples the ring with the same stride as the vector pass: every
    /// peak counts in N_t, and exactly every m-th residual peak since the last fit (censored if
    /// extreme) enters the ring, in order.
    @Test func driftPassSamplesTheRingWithTheStride() throws {
        let k = 5, n = 300, d = 20, m = 4
        var cfg = config(calibration: n, refits: 0)   // no budgeted refits: the ring only grows
        cfg.driftWindow = d
        cfg.peakStride = m
        cfg.maxPeaks = 256
        let bank = try FilterBank(filterCount: k, configuration: cfg)
        var f = SyntheticFeed(seed: 52, filters: k)
        for r in f.rows(n) { feed(bank, r) }
        let start = (0..<k).map { bank.report(filter: $0) }
        var samples = [[Float]](repeating: [], count: k)
        var since = [Int](repeating: 0, count: k)
        for _ in 0..<2000 {
            let row = f.row()
            let before = (0..<k).map { j -> (Double, Double, Double) in
                let r = bank.report(filter: j)
                return (bank.driftMean(j)!, r.threshold, r.extremeThreshold)
            }
            feed(bank, row)
            let ex = Set(bank.lastExtremes.map(Int.init))
            for j in 0..<k {
                let (mean, t, z) = before[j]
                let resid = Double(row[j]) - mean
                guard resid > t else { continue }
                since[j] += 1
                if since[j] % m == 0 { samples[j].append(ex.contains(j) ? -Float(z - t) : Float(resid - t)) }
            }
        }
        for j in 0..<k {
            let r = bank.report(filter: j)
            #expect(r.peaks == start[j].peaks + UInt64(since[j]), "N_t counts every peak, filter \(j)")
            #expect(r.peaksInRing == min(256, start[j].peaksInRing + since[j] / m), "filter \(j)")
            #expect(r.peaksSinceFit == since[j])
        }
        #expect(since.allSatisfy { $0 > 100 })
        // The newest ring entries are exactly the samples tracked here, in order (no wrap yet).
        for j in 0..<k {
            let h = Int(bank.storage.head[j]), c = samples[j].count
            #expect(h >= c && Int(bank.storage.ringCount[j]) < bank.cap, "filter \(j)")
            let newest = (0..<c).map { bank.storage.ring[j * bank.cap + h - c + $0] }
            #expect(newest.map(\.bitPattern) == samples[j].map(\.bitPattern), "filter \(j)")
        }
    }

    @Test func stateIsBoundedAtDefaults() throws {
        let bank = try FilterBank(filterCount: 8)
        #expect(bank.bytesPerFilter <= 2048)
    }
}
