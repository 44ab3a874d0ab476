import Testing
import Foundation
import SaliencyCore
@testable import EVTOnline

/// The lower tail and `tails = both` (docs/statistics.md, "Two tails").
@Suite struct FilterBankTwoSidedTests {
    struct Reference: Decodable {
        struct Filter: Decodable {
            var zeros: Int
            var p0: Double
            var mode: String
            var t_low: Double
            var nt: Int
            var n_plus: Int
            var peaks: [Double]
            var scipy_shape: Double
            var scipy_scale: Double
            var scipy_loglik: Double
            var z_low: Double
            var y_q: Double?
            var r_star: Int?
        }
        var level: Double
        var q: Double
        var calibration: Int
        var columns: [[Double]]
        var filters: [Filter]
    }

    static func reference() throws -> Reference {
        let url = try #require(Bundle.module.url(forResource: "lower_reference", withExtension: "json", subdirectory: "Fixtures"))
        return try JSONDecoder().decode(Reference.self, from: Data(contentsOf: url))
    }

    static func twoSided(calibration: Int, level: Double = 0.9, q: Double = 1e-3, tails: TailSelection = .both,
                         refits: Double = 1e6, maxPeaks: Int = 256) -> POTConfiguration {
        var c = config(calibration: calibration, level: level, q: q, refits: refits, maxPeaks: maxPeaks)
        c.tails = tails
        return c
    }

    /// Calibration of the lower tail equals the numpy/scipy batch reference
    /// (Fixtures/gen_lower_reference.py): zero counts and mode, t_low, N_t, the peaks themselves,
    /// the GPD fit (scipy's MLE: same shape where it is interior, a likelihood at least as good where
    /// scipy's optimizer leaves the γ > −1 region) and z_low.
    @Test func lowerCalibrationEqualsTheScipyReference() throws {
        let ref = try Self.reference()
        let k = ref.columns.count
        let cfg = Self.twoSided(calibration: ref.calibration, level: ref.level, q: ref.q, maxPeaks: 256)
        let bank = try FilterBank(filterCount: k, configuration: cfg)
        for r in 0..<ref.calibration { feed(bank, (0..<k).map { Float(ref.columns[$0][r]) }) }
        #expect(bank.isCalibrated)
        for (j, f) in ref.filters.enumerated() {
            let rep = try #require(bank.lowerReport(filter: j))
            #expect(rep.calibrationZeros == UInt64(f.zeros), "filter \(j)")
            #expect(rep.zeroMode.description == f.mode, "filter \(j): mode \(rep.zeroMode) vs \(f.mode)")
            #expect(abs(rep.threshold - f.t_low) <= 1e-12 * f.t_low, "filter \(j): t_low \(rep.threshold) vs \(f.t_low)")
            #expect(rep.peaks == UInt64(f.nt) && rep.n == UInt64(f.n_plus), "filter \(j): N_t \(rep.peaks)/\(f.nt), n₊ \(rep.n)/\(f.n_plus)")
            // The ring holds exactly the reference's peaks, in arrival order (float32).
            let ring = bank.lowerRing(filter: j)
            #expect(ring == f.peaks.map { Float($0) }, "filter \(j): ring differs")
            // The fit: the profile likelihood at Swift's fit is at least scipy's (to 1e-6 relative)
            // and, where scipy's shape is interior (γ > −0.8), the same shape to 0.01.
            let ys = f.peaks
            let gs = GPD(shape: rep.shape, scale: rep.scale)
            let ll = ys.withUnsafeBufferPointer { gs.logLikelihood($0) }
            #expect(ll >= f.scipy_loglik - 1e-6 * abs(f.scipy_loglik), "filter \(j): ℓ \(ll) < scipy \(f.scipy_loglik)")
            if f.scipy_shape > -0.8 {
                #expect(abs(rep.shape - f.scipy_shape) <= 0.01, "filter \(j): shape \(rep.shape) vs scipy \(f.scipy_shape)")
                if let yq = f.y_q {
                    let y = log(rep.threshold / rep.extremeThreshold)
                    #expect(abs(y - yq) <= 0.02 * yq, "filter \(j): y_q \(y) vs \(yq)")
                }
            }
            // z_low follows from the fit by the stated formula (with p0 and q₊).
            if f.mode == "extreme" {
                let qPlus = (ref.q / 2 - f.p0) / (1 - f.p0)
                let y = POT.extremeThreshold(threshold: 0, gpd: gs, q: qPlus, n: Double(f.n_plus), peaks: Double(f.nt))
                #expect(abs(rep.extremeThreshold - rep.threshold * exp(-y)) <= 1e-12 * rep.threshold, "filter \(j): z_low \(rep.extremeThreshold)")
                if let zq = f.y_q.map({ f.t_low * exp(-$0) }), f.scipy_shape > -0.8 {
                    #expect(abs(rep.extremeThreshold - zq) <= 0.05 * zq, "filter \(j): z_low \(rep.extremeThreshold) vs scipy's \(zq)")
                }
            } else {
                #expect(rep.extremeThreshold == 0, "filter \(j): watch mode has no positive extremes")
                #expect(rep.zeroRunThreshold == f.r_star, "filter \(j): r* \(String(describing: rep.zeroRunThreshold)) vs \(String(describing: f.r_star))")
            }
        }
    }

    /// Streaming equals batch for both tails: with in-line refits off, every lower peak and
    /// censored extreme of the monitoring rows is tracked independently here; a refit then equals
    /// a batch Grimshaw fit of the tracked ring, and N_t, n₊, zeros and extremes equal the counts.
    /// The upper tail of the same two-sided bank equals an upper-only bank at q/2.
    @Test func twoSidedStreamingEqualsBatch() throws {
        let k = 29, nCal = 600, cap = 64
        var cfg = Self.twoSided(calibration: nCal, level: 0.9, q: 4e-3, refits: 0, maxPeaks: cap)
        cfg.peakStride = 1
        let bank = try FilterBank(filterCount: k, configuration: cfg)
        var upperCfg = cfg
        upperCfg.tails = .upper
        upperCfg.q = cfg.q / 2
        let upper = try FilterBank(filterCount: k, configuration: upperCfg)
        // `both` runs the fused kernel (scan_both); a `lower` bank at q/2 runs scan_lower alone.
        var lowerCfg = upperCfg
        lowerCfg.tails = .lower
        let lowerOnly = try FilterBank(filterCount: k, configuration: lowerCfg)
        var f = SyntheticFeed(seed: 77, filters: k)
        var rows = f.rows(nCal)
        for r in rows { feed(bank, r); feed(upper, r); feed(lowerOnly, r) }
        // Independent trackers, seeded with the calibration peaks.
        var rings: [[Float]] = (0..<k).map { j in
            let t = bank.lowerReport(filter: j)!.threshold
            return Array(rows.compactMap { r -> Float? in r[j] > 0 && Double(r[j]) < t ? Float(log(t / Double(r[j]))) : nil }.suffix(cap))
        }
        var nt = (0..<k).map { Int(bank.lowerReport(filter: $0)!.peaks) }
        var zeros = (0..<k).map { j in rows.filter { $0[j] == 0 }.count }
        var extremes = [Int](repeating: 0, count: k)
        rows = []
        for i in 0..<3000 {
            var r = f.row()
            if i % 53 == 0 { r[3] = 0; r[11] *= 0.001 }
            if i > 2000 { r[20] = 0 }
            let reports = (0..<k).map { bank.lowerReport(filter: $0)! }
            let res = feed(bank, r)
            feed(upper, r)
            feed(lowerOnly, r)
            #expect(Array(bank.lastLowerExtremes) == Array(lowerOnly.lastLowerExtremes), "row \(i): fused lower pass ≠ scan_lower")
            var expected: [Int32] = []
            for j in 0..<k {
                let s = r[j], rep = reports[j]
                if s == 0 {
                    zeros[j] += 1
                    if rep.zeroMode == .extreme { expected.append(Int32(j)); extremes[j] += 1 }
                    continue
                }
                guard Double(s) < rep.threshold else { continue }
                nt[j] += 1
                let ext = s < FilterBank.floatUp(rep.extremeThreshold) && rep.zeroMode == .extreme
                if ext { expected.append(Int32(j)); extremes[j] += 1 }
                rings[j].append(ext ? -Float(log(rep.threshold / rep.extremeThreshold)) : Float(log(rep.threshold / Double(s))))
                if rings[j].count > cap { rings[j].removeFirst() }
            }
            #expect(Array(bank.lastLowerExtremes) == expected, "row \(i)")
            #expect(res.lowerExtremes == expected.count)
            #expect(Array(bank.lastExtremes) == Array(upper.lastExtremes), "row \(i): upper tails differ")
        }
        var fitter = GrimshawFitter(capacity: cap)
        for j in 0..<k {
            let before = bank.lowerReport(filter: j)!
            #expect(Int(before.peaks) == nt[j] && Int(before.zeros) == zeros[j] && Int(before.extremes) == extremes[j], "filter \(j) counts")
            #expect(bank.lowerRing(filter: j) == rings[j], "filter \(j): ring")
            bank.refit(filter: j)
            upper.refit(filter: j)
            let obs = rings[j].filter { $0.sign == .plus }, cens = rings[j].filter { $0.sign == .minus }.map { -$0 }
            let fit = obs.withUnsafeBufferPointer { o in cens.withUnsafeBufferPointer { c in fitter.fit(o, censored: c, minPeaks: cfg.minPeaks) } }
            let after = bank.lowerReport(filter: j)!
            #expect(after.shape == fit.gpd.shape && after.scale == fit.gpd.scale, "filter \(j): refit ≠ batch fit")
            let u = bank.report(filter: j), v = upper.report(filter: j)
            #expect(u.shape == v.shape && u.extremeThreshold == v.extremeThreshold && u.extremes == v.extremes, "filter \(j): upper tail of `both` ≠ upper-only at q/2")
            lowerOnly.refit(filter: j)
            #expect(bank.lowerReport(filter: j) == lowerOnly.lowerReport(filter: j), "filter \(j): lower tail of `both` ≠ lower-only at q/2")
        }
        // Filter 20 died at row 2000 of the stream: every zero since is a lower extreme.
        #expect(bank.lowerReport(filter: 20)!.extremes >= 999)
        bank.checkInvariants()
    }

    /// Realised lower-tail extreme rate on i.i.d. streams within [0.5, 2]·q_l (q_l = q for
    /// `lower`, q/2 per tail for `both`, whose total is then within [0.5, 2]·q).
    @Test(arguments: [TailSelection.lower, .both])
    func lowerTailAlarmRateIsCalibrated(_ tails: TailSelection) throws {
        let k = 24, nCal = 4000, rows = 60_000
        let cfg = Self.twoSided(calibration: nCal, level: 0.98, q: 1e-3, tails: tails, refits: 0.5)
        let bank = try FilterBank(filterCount: k, configuration: cfg)
        var rng = SplitMix64(seed: tails == .both ? 11 : 12)
        // Six families × 4: exponential, half-normal, lognormal, gamma(3), uniform, exponential
        // with zeros at p0 = 2e-4 (< q_l: zeros are extreme, the positive part gets the rest).
        func value(_ j: Int) -> Float {
            switch j % 6 {
            case 0: return Float(-log(1 - rng.uniform()))
            case 1: return Float(abs(rng.normal()))
            case 2: return Float(exp(0.5 * rng.normal()))
            case 3: return Float(-log((1 - rng.uniform()) * (1 - rng.uniform()) * (1 - rng.uniform())))
            case 4: return Float(rng.uniform())
            default: return rng.uniform() < 2e-4 ? 0 : Float(-log(1 - rng.uniform()))
            }
        }
        var lower = [Int](repeating: 0, count: 6), upperCount = 0
        var row = [Float](repeating: 0, count: k)
        for i in 0..<(nCal + rows) {
            for j in 0..<k { row[j] = value(j) }
            feed(bank, row)
            guard i >= nCal else { continue }
            for j in bank.lastLowerExtremes { lower[Int(j) % 6] += 1 }
            upperCount += bank.lastExtremes.count
        }
        let ql = cfg.tailQ
        let values = Double(rows * k / 6)
        for family in 0..<6 {
            let rate = Double(lower[family]) / values / ql
            #expect(rate >= 0.5 && rate <= 2, "family \(family): lower rate \(rate)·q_l (\(tails))")
        }
        if tails == .both {
            let total = Double(lower.reduce(0, +) + upperCount) / Double(rows * k) / cfg.q
            #expect(total >= 0.5 && total <= 2, "both: total rate \(total)·q")
        } else {
            #expect(upperCount == 0, "tails = lower flagged upper extremes")
        }
    }

    /// Zero-common filters (p0 ≥ q_l): a single zero is ordinary, a run of r* zeros is extreme; on
    /// i.i.d. rows the realised rate is at most q_l and at least p0·q_l (r* is an integer).
    @Test func zeroWatchRunsAreCalibrated() throws {
        let k = 16, nCal = 4000, rows = 60_000
        let cfg = Self.twoSided(calibration: nCal, level: 0.98, q: 1e-3, tails: .lower, refits: 0.5)
        let bank = try FilterBank(filterCount: k, configuration: cfg)
        var rng = SplitMix64(seed: 5)
        let p0s = [0.05, 0.2, 0.3, 0.5]
        var row = [Float](repeating: 0, count: k)
        var lower = [Int](repeating: 0, count: p0s.count)
        for i in 0..<(nCal + rows) {
            for j in 0..<k { row[j] = rng.uniform() < p0s[j % 4] ? 0 : Float(-log(1 - rng.uniform())) }
            feed(bank, row)
            guard i >= nCal else { continue }
            for j in bank.lastLowerExtremes { lower[Int(j) % 4] += 1 }
        }
        for j in 0..<4 { #expect(bank.lowerReport(filter: j)!.zeroMode == .watch) }
        for (m, p0) in p0s.enumerated() {
            let rate = Double(lower[m]) / Double(rows * k / 4) / cfg.q
            #expect(rate <= 2 && rate >= 0.5 * p0, "p0 \(p0): zero-run rate \(rate)·q")
        }
        // A dead filter is found: after calibration filter 2 (p0 = 0.3) is always 0.
        let before = bank.lowerReport(filter: 2)!.extremes
        let rStar = bank.lowerReport(filter: 2)!.zeroRunThreshold!
        for _ in 0..<100 {
            for j in 0..<k { row[j] = j == 2 ? 0 : Float(-log(1 - rng.uniform())) + 0.01 }
            feed(bank, row)
        }
        #expect(bank.lowerReport(filter: 2)!.extremes - before >= UInt64(100 - rStar))
        #expect(bank.direction(filter: 2, value: 0, newest: true) == .lower)
        #expect(bank.lowerTailProbability(filter: 2, value: 0, newest: true) < 1e-20)
    }

    /// Faults are found in the right direction, and only there; scores rank both tails together.
    @Test func deadAndQuietFiltersRaiseLowerExtremes() throws {
        let k = 40, nCal = 1000
        // No refits: the daemon freezes a firing filter's model; here nothing learns the fault.
        let bank = try FilterBank(filterCount: k, configuration: Self.twoSided(calibration: nCal, level: 0.95, q: 1e-3, refits: 0))
        var f = SyntheticFeed(seed: 9, filters: k)
        for r in f.rows(nCal) { feed(bank, r) }
        var lowerHits = [Int](repeating: 0, count: k), upperHits = [Int](repeating: 0, count: k)
        var last: [Float] = []
        for _ in 0..<200 {
            var r = f.row()
            r[7] = 0           // dead
            r[13] *= 1e-3      // quiet
            r[21] *= 1e3       // exploding
            feed(bank, r)
            for j in bank.lastLowerExtremes { lowerHits[Int(j)] += 1 }
            for j in bank.lastExtremes { upperHits[Int(j)] += 1 }
            last = r
        }
        #expect(lowerHits[7] == 200 && lowerHits[13] >= 150 && upperHits[21] >= 150)
        #expect(lowerHits[21] == 0 && upperHits[7] == 0 && upperHits[13] == 0)
        for j in 0..<k where ![7, 13, 21].contains(j) { #expect(lowerHits[j] + upperHits[j] <= 3, "filter \(j)") }
        #expect(bank.direction(filter: 7, value: last[7]) == .lower && bank.direction(filter: 21, value: last[21]) == .upper)
        let top = last.withUnsafeBufferPointer { bank.top($0, k: 3, by: .pot) }
        #expect(Set(top.map(\.filter)) == [7, 13, 21])
    }

    /// `upper` allocates none of the lower columns (no memory touched per row for them).
    @Test func upperOnlyHasNoLowerColumns() throws {
        let up = POTConfiguration()
        var both = up
        both.tails = .both
        #expect(FilterBank.bytesPerFilter(both) > FilterBank.bytesPerFilter(up) + 4 * up.maxPeaks)
        let bank = try FilterBank(filterCount: 9, configuration: config(calibration: 100))
        #expect(bank.lowerReport(filter: 0) == nil && bank.lastLowerExtremes.isEmpty)
        #expect(!bank.storage.columns.contains { $0.role == .lowerState })
        var drift = both
        drift.driftWindow = 10
        #expect(throws: SaliencyError.self) { try drift.validate() }
    }

    /// Snapshots: `both` round-trips through version 2 and continues identically; the tails
    /// setting must match; corrupted lower state is rejected, never trapped on.
    @Test func twoSidedSnapshotRoundTripsAndValidates() throws {
        let k = 21
        var cfg = Self.twoSided(calibration: 300, q: 2e-3, refits: 0.3)
        cfg.refitAfterPeaks = 8
        let bank = try FilterBank(filterCount: k, configuration: cfg)
        var f = SyntheticFeed(seed: 3, filters: k)
        for (i, var r) in f.rows(900).enumerated() {
            if i > 400, i % 7 == 0 { r[4] = 0 }
            if i == 500 { bank.setFrozen(4, true, direction: .lower) }
            feed(bank, r)
        }
        let bytes = bank.serializedState()
        #expect(bytes[0] == 2)
        let restored = try FilterBank(restoring: bytes, configuration: cfg)
        restored.checkInvariants()
        #expect(restored.serializedState() == bytes)
        #expect(restored.isFrozen(4, direction: .lower) && !restored.isFrozen(4))
        for r in f.rows(300) {
            #expect(feed(restored, r) == feed(bank, r))
            #expect(Array(restored.lastLowerExtremes) == Array(bank.lastLowerExtremes))
        }
        var other = cfg
        other.tails = .upper
        #expect(throws: SaliencyError.self) { try FilterBank(restoring: bytes, configuration: other) }
        // Flip bytes inside the lower section: a clear error or a consistent bank, never a trap.
        var rng = SplitMix64(seed: 1)
        for _ in 0..<200 {
            var bad = bytes
            let at = bytes.count - 200 - Int(rng.next() % UInt64(bytes.count / 3))
            bad[at] ^= UInt8(1 << (rng.next() % 8))
            if let b = try? FilterBank(restoring: bad, configuration: cfg) { b.checkInvariants() }
        }
    }

    /// Both kernel variants leave bit-identical two-sided state (zeros, quiet values, extremes of
    /// both tails, frozen lower tails, a ring stride).
    @Test func lowerKernelsAreBitIdenticalAcrossInstructionSets() throws {
        let k = 203, n = 300
        var cfg = Self.twoSided(calibration: n, q: 2e-3, refits: 0.3)
        cfg.peakStride = 2
        cfg.refitAfterPeaks = 8
        let base = try FilterBank(filterCount: k, configuration: cfg, kernels: .baseline)
        let best = try FilterBank(filterCount: k, configuration: cfg, kernels: .best)
        var f = SyntheticFeed(seed: 43, filters: k)
        for (i, var r) in f.rows(n).enumerated() {
            if i % 10 == 0 { r[50] = 0 }   // p0 = 0.1: zero watch
            feed(base, r); feed(best, r)
        }
        var lowers = 0
        for i in 0..<1500 {
            var r = f.row()
            if i % 97 == 0 { r[5] *= 1000; r[202] = 0; r[131] *= 1e-4 }
            if i > 1000 { r[50] = 0; r[199] = 0 }
            if i == 400 { for b in [base, best] { b.setFrozen(17, true, direction: .lower) } }
            if i == 900 { for b in [base, best] { b.setFrozen(17, false, direction: .lower) } }
            let a = feed(base, r), b = feed(best, r)
            #expect(a == b, "row \(i)")
            #expect(Array(base.lastLowerExtremes) == Array(best.lastLowerExtremes), "row \(i)")
            lowers += a.lowerExtremes
        }
        #expect(lowers > 500)
        #expect(base.serializedState() == best.serializedState())
        base.checkInvariants()
    }
}

extension FilterBank.ZeroMode: CustomStringConvertible {
    public var description: String {
        switch self { case .off: "off"; case .extreme: "extreme"; case .watch: "watch" }
    }
}

extension FilterBank {
    /// Filter j's lower ring, oldest first (tests).
    func lowerRing(filter j: Int) -> [Float] {
        guard let L = storage.lower else { return [] }
        let c = Int(L.ringCount[j]), start = c == cap ? Int(L.head[j]) : 0
        return (0..<c).map { L.ring[j * cap + (start + $0) % cap] }
    }
}
