import RealModule
import SaliencyCore
import CKernels

/// Which tail of a filter a value, an extreme or an alert belongs to.
public enum TailDirection: String, Sendable, Hashable, Codable, CaseIterable {
    /// Saliency larger than usual (exploding gradient).
    case upper
    /// Saliency smaller than usual: a filter going quiet, or exactly 0 (dead).
    case lower
}

extension FilterBank {
    /// How a filter's exact zeros are treated (decided at calibration from the zero fraction
    /// `p̂0 = zeros/n_cal` and the lower tail's risk `q_l`; docs/statistics.md, "Two tails").
    public enum ZeroMode: UInt8, Sendable, Hashable, Codable {
        /// `p̂0 = 1`: the filter was always 0 in calibration; a zero says nothing.
        case off = 0
        /// `p̂0 < q_l`: every exact 0 is a lower extreme (its probability is below the budget);
        /// the positive part gets the rest of the budget, `(q_l − p̂0)/(1 − p̂0)`.
        case extreme = 1
        /// `q_l ≤ p̂0 < 1`: a single zero is ordinary; a run of `r*` consecutive zeros, with
        /// `p0^r* ≤ q_l`, is the extreme (`zeroRunThreshold`). No positive value is extreme.
        case watch = 2
    }

    // MARK: - Calibration

    /// The lower tail of filter j from its calibration column (`sorted`: the same values ascending).
    func calibrateLower(_ j: Int, column: UnsafeBufferPointer<Float>, sorted: UnsafePointer<Float>) {
        guard let L = storage.lower else { return }
        let n = column.count
        var zeros = 0
        while zeros < n, sorted[zeros] == 0 { zeros += 1 }
        L.calZeros[j] = UInt64(zeros)
        L.zeros[j] = UInt64(zeros)
        // Runs of zeros, row numbers 1…n (as the stream counts them).
        var last: UInt64 = 0, run: UInt32 = 0
        for (r, v) in column.enumerated() where v == 0 {
            let row = UInt64(r + 1)
            run = (last == row - 1 && run > 0) ? run &+ 1 : 1
            last = row
        }
        L.zeroLast[j] = last; L.zeroRun[j] = run
        let nPos = n - zeros
        let t = nPos > 0 ? Self.quantile(sorted: sorted + zeros, count: nPos, 1 - configuration.level) : 0
        L.thrD[j] = t
        L.thr[j] = Self.floatUp(t)
        let p0 = Double(zeros) / Double(n)
        let mode: ZeroMode = zeros == n ? .off : (p0 < configuration.tailQ ? .extreme : .watch)
        L.zeroMode[j] = mode.rawValue
        // Peaks log(t/s) of the positive values below t, in arrival order; the ring keeps the newest `cap`.
        var nt: UInt64 = 0
        let base = L.ring + j * cap
        var h = 0, count = 0
        for v in column where v > 0 && Double(v) < t {
            base[h] = Float(Double.log(t / Double(v)))
            h += 1; if h == cap { h = 0 }
            count = min(count + 1, cap)
            nt += 1
        }
        L.head[j] = UInt32(h); L.ringCount[j] = UInt32(count); L.ntAtFit[j] = nt; L.sinceFit[j] = 0
        fitLower(j)
    }

    static func floatUp(_ d: Double) -> Float {
        var f = Float(d)
        if Double(f) < d { f = f.nextUp }
        return f
    }

    // MARK: - The row pass

    /// The lower tail's vector pass (`scan_lower`, Sources/CKernels) and its events. Returns the
    /// number of lower peaks (extremes included, zeros excluded).
    @inline(__always)
    func scanLower(_ row: UnsafePointer<Float>) -> Int {
        guard let L = storage.lower else { return 0 }
        var columns = saliency_lower_columns(
            thr: L.thr, ext: L.ext, since: L.sinceFit,
            strideMask: UInt32(truncatingIfNeeded: peakStride - 1),
            dueAt: UInt32(truncatingIfNeeded: configuration.refitAfterPeaks), count: Int64(filterCount))
        var peaks: Int64 = 0
        let groups = Int(scanLowerKernel(&columns, row, storage.eventBase, storage.eventMask, &peaks))
        // The events as lower entries (~j) of the event list, handled like scanBoth's.
        let list = L.eventList
        var n = 0
        forEachEvent(groups) { j in
            list[n] = ~Int32(truncatingIfNeeded: j)
            n &+= 1
        }
        handleEventList(L, n, row)
        return Int(peaks)
    }

    /// `tails = both`: `scan_both` (the upper pass and the lower pass fused, reading each value
    /// once; bit-identical to running them one after the other), then both tails' events in one
    /// software-pipelined loop. Returns upper plus lower peaks (extremes excluded).
    ///
    /// The events of a row are first listed once (`Lower.eventList`: upper events as `j`, lower
    /// ones as `~j`; each tail's ascending, so extremes are reported in order and the two tails,
    /// which share no per-filter state, are handled exactly as one after the other). While event
    /// i is handled, the cold columns of event i + 16 and the ring line of event i + 8 (whose
    /// head was requested 8 events earlier) are prefetched: a bounded number of misses in flight.
    /// Staging every event's prefetches first (the upper-only `scan`) issued ~1,000 at K = 26,560
    /// and stalled on the ring heads of the second tail (perf, BENCHMARKS.md "Two tails").
    @inline(__always)
    func scanBoth(_ row: UnsafePointer<Float>) -> Int {
        guard let L = storage.lower else { return scan(row) }
        var upper = saliency_scan_columns(
            thr: storage.thr, ext: storage.ext, shift: storage.shift, bsum: storage.bsum, bsumsq: storage.bsumsq, since: storage.sinceFit,
            strideMask: UInt32(truncatingIfNeeded: peakStride - 1),
            dueAt: UInt32(truncatingIfNeeded: configuration.refitAfterPeaks), count: Int64(filterCount))
        var lower = saliency_lower_columns(
            thr: L.thr, ext: L.ext, since: L.sinceFit,
            strideMask: UInt32(truncatingIfNeeded: peakStride - 1),
            dueAt: UInt32(truncatingIfNeeded: configuration.refitAfterPeaks), count: Int64(filterCount))
        var peaks: Int64 = 0, lowerPeaks: Int64 = 0
        let groups = Int(scanBothKernel(&upper, &lower, row, storage.eventBase, storage.eventMask, L.eventMask, &peaks, &lowerPeaks))
        let list = L.eventList
        var n = 0
        for g in 0..<groups {
            let base = storage.eventBase[g]
            var m = storage.eventMask[g]
            while m != 0 {
                list[n] = base &+ Int32(truncatingIfNeeded: m.trailingZeroBitCount)
                n &+= 1
                m &= m &- 1
            }
            m = L.eventMask[g]
            while m != 0 {
                list[n] = ~(base &+ Int32(truncatingIfNeeded: m.trailingZeroBitCount))
                n &+= 1
                m &= m &- 1
            }
        }
        handleEventList(L, n, row)
        return Int(peaks) &- extremeCount &+ Int(lowerPeaks) &- lowerExtremeCount
    }

    /// Handles the first `n` entries of `Lower.eventList` in order, prefetching ahead (`scanBoth`).
    @inline(__always)
    func handleEventList(_ L: Lower, _ n: Int, _ row: UnsafePointer<Float>) {
        let list = L.eventList
        let ahead = Self.eventColumnsAhead, ringAhead = Self.eventRingAhead
        for i in 0..<min(ahead, n) { prefetchEventColumns(L, list[i]) }
        for i in 0..<min(ringAhead, n) { prefetchEventRing(L, list[i]) }
        for i in 0..<n {
            if i &+ ahead < n { prefetchEventColumns(L, list[i &+ ahead]) }
            if i &+ ringAhead < n { prefetchEventRing(L, list[i &+ ringAhead]) }
            let e = Int(list[i])
            if e >= 0 {
                handleEvent(e, row[e])
            } else {
                let j = ~e
                handleLowerEvent(L, j, row[j])
            }
        }
    }

    /// Prefetch distances of `scanBoth`'s event loop (events ahead of the one being handled).
    static let eventColumnsAhead = 16
    static let eventRingAhead = 8

    /// The cold per-filter columns an event of the list entry `e` (`j` upper, `~j` lower) reads.
    @inline(__always)
    func prefetchEventColumns(_ L: Lower, _ e: Int32) {
        if e >= 0 {
            let j = Int(e)
            saliency_prefetch_read(storage.head + j)
            saliency_prefetch_read(storage.thrD + j)
            saliency_prefetch_read(storage.ringCount + j)
            saliency_prefetch_read(storage.frozen + j)
        } else {
            let j = Int(~e)
            saliency_prefetch_read(L.head + j)
            saliency_prefetch_read(L.thrD + j)
            saliency_prefetch_read(L.ringCount + j)
            saliency_prefetch_read(L.frozen + j)
            saliency_prefetch_read(L.zeroMode + j)
        }
    }

    /// The ring line the event of list entry `e` writes if it stores a peak (reads the ring head).
    @inline(__always)
    func prefetchEventRing(_ L: Lower, _ e: Int32) {
        if e >= 0 {
            let j = Int(e)
            saliency_prefetch_write(storage.ring + (j &* cap &+ Int(storage.head[j])))
        } else {
            let j = Int(~e)
            saliency_prefetch_write(L.ring + (j &* cap &+ Int(L.head[j])))
        }
    }

    @inline(__always)
    func handleLowerEvent(_ L: Lower, _ j: Int, _ s: Float) {
        if s == 0 {
            // The atom: counted, its run tracked; never a peak of the positive part.
            L.zeros[j] &+= 1
            let run = (L.zeroLast[j] == rows &- 1 && L.zeroRun[j] > 0) ? L.zeroRun[j] : 0
            L.zeroRun[j] = run == .max ? run : run &+ 1
            L.zeroLast[j] = rows
            switch L.zeroMode[j] {
            case ZeroMode.extreme.rawValue: recordLowerExtreme(L, j)
            case ZeroMode.watch.rawValue: if L.zeroRun[j] >= zeroRunThreshold(j) { recordLowerExtreme(L, j) }
            default: break
            }
            return
        }
        let extreme = s < L.ext[j]
        if extreme { recordLowerExtreme(L, j) }
        let since = L.sinceFit[j]
        guard Double(s) < L.thrD[j] else { return }   // an extreme is always a peak; this is defensive
        if since == 0 { L.ntAtFit[j] &+= 1 << 32 }
        guard !L.frozen[j] else { return }
        if since & UInt32(truncatingIfNeeded: peakStride - 1) == 0 {
            storeLowerPeak(L, j, extreme ? -Float(Double.log(L.thrD[j] / max(L.extD[j], .leastNonzeroMagnitude))) : Float(Double.log(L.thrD[j] / Double(s))))
        }
        if since == UInt32(truncatingIfNeeded: configuration.refitAfterPeaks) { markLowerDue(L, j) }
    }

    @inline(__always)
    func recordLowerExtreme(_ L: Lower, _ j: Int) {
        L.extremesTotal[j] &+= 1
        L.extremeOut[lowerExtremeCount] = Int32(truncatingIfNeeded: j)
        lowerExtremeCount &+= 1
    }

    @inline(__always)
    func storeLowerPeak(_ L: Lower, _ j: Int, _ excess: Float) {
        let h = Int(L.head[j])
        L.ring[j &* cap &+ h] = excess
        L.head[j] = h &+ 1 == cap ? 0 : UInt32(h &+ 1)
        if Int(L.ringCount[j]) < cap { L.ringCount[j] &+= 1 }
    }

    @inline(__always)
    func markLowerDue(_ L: Lower, _ j: Int) {
        L.isDue[j] = true
        guard !L.inQueue[j] else { return }
        L.inQueue[j] = true
        var tail = lowerQueueHead + lowerQueueCount
        if tail >= filterCount { tail -= filterCount }
        L.queue[tail] = Int32(j)
        lowerQueueCount += 1
    }

    /// `p̂0'`, the probability of an exact 0 as estimated from calibration: `(zeros + 1)/(n + 1)`
    /// (never 0, so a zero never seen in calibration has a finite score bounded by the sample size).
    func zeroProbability(_ j: Int) -> Double {
        guard let L = storage.lower else { return 1 }
        return Double(L.calZeros[j] + 1) / Double(configuration.calibration + 1)
    }

    /// `r*`: the shortest run of zeros whose probability `p̂0'^r*` is at most `q_l` (watch mode).
    func zeroRunThreshold(_ j: Int) -> UInt32 {
        let p = zeroProbability(j)
        guard p < 1 else { return .max }
        let r = (Double.log(configuration.tailQ) / Double.log(p)).rounded(.up)
        return r >= Double(UInt32.max) ? .max : UInt32(max(1, r))
    }

    // MARK: - Fit

    /// `n` of the lower tail's positive part: valid rows minus the zeros counted.
    @inline(__always) func nLower(_ j: Int) -> UInt64 {
        guard let L = storage.lower else { return 0 }
        let n = nPOT(j)
        return n > L.zeros[j] ? n - L.zeros[j] : 0
    }
    @inline(__always) func ntLower(_ j: Int) -> UInt64 {
        guard let L = storage.lower else { return 0 }
        return L.ntAtFit[j] + UInt64(L.sinceFit[j])
    }

    /// Full Grimshaw fit on filter j's lower ring (the excesses log(t_low/s)); recomputes z_low = t_low·e^(−y_q).
    func fitLower(_ j: Int) {
        guard let L = storage.lower else { return }
        let fit = fitRing(L.ring + j * cap, count: Int(L.ringCount[j]), head: Int(L.head[j]))
        refitCount &+= 1
        L.ntAtFit[j] &+= UInt64(L.sinceFit[j])
        L.sinceFit[j] = 0
        L.isDue[j] = false
        L.shape[j] = fit.gpd.shape
        L.scale[j] = fit.gpd.scale
        L.method[j] = fit.method.rawValue
        let t = L.thrD[j]
        let p0 = Double(L.calZeros[j]) / Double(configuration.calibration)
        let mode = ZeroMode(rawValue: L.zeroMode[j]) ?? .off
        // The positive part's share of the budget: P(X = 0) + (1 − p0)·q₊ = q_l.
        let qPlus = mode == .extreme ? (configuration.tailQ - p0) / (1 - p0) : 0
        var z = 0.0
        let nl = Double(nLower(j)), nt = Double(L.ntAtFit[j])
        if fit.method != .insufficientPeaks, qPlus > 0, t > 0, nl > 0, nt > 0 {
            let y = POT.extremeThreshold(threshold: 0, gpd: fit.gpd, q: qPlus, n: nl, peaks: nt)
            z = y >= 0 ? t * Double.exp(-y) : t   // q₊ ≥ N_t/n: every peak is extreme (also catches NaN)
        }
        L.extD[j] = z
        switch mode {
        case .extreme: L.ext[j] = max(Self.floatUp(z), Float.leastNonzeroMagnitude)   // 0 < ext: a zero is extreme
        case .watch: L.ext[j] = -0.0                                                    // sign bit: zero events
        case .off: L.ext[j] = 0
        }
    }

    // MARK: - Scores

    /// Lower tail probability `P(X ≤ s)` of value `s` for filter j (docs/statistics.md, "Two tails"):
    /// - `s = 0`: `p̂0'^r`, `r` the current run of zeros when `newest` (s is this filter's value in
    ///   the newest row) and the run includes it, else 1;
    /// - `0 < s < t_low`: `p̂0 + (1 − p̂0)·(N_t/n₊)·S_GPD(log(t_low/s))` (floored like the upper tail
    ///   for γ < 0; empirical ring tail without a fit);
    /// - `s ≥ t_low`: `max(F̂(s), p̂0 + (1 − p̂0)·N_t/n₊)` from the calibration sketch.
    public func lowerTailProbability(filter j: Int, value s: Float, newest: Bool = false) -> Double {
        precondition(isCalibrated, "lowerTailProbability before calibration")
        guard let L = storage.lower else { return 1 }
        if s == 0 {
            let p = zeroProbability(j)
            let r = newest && L.zeroLast[j] == rows ? Double(max(1, L.zeroRun[j])) : 1
            return p >= 1 ? 1 : Double.pow(p, r)
        }
        let p0 = Double(L.calZeros[j]) / Double(configuration.calibration)
        let nl = Double(nLower(j)), ntl = Double(ntLower(j))
        let rate = nl > 0 ? ntl / nl : 0
        let t = L.thrD[j]
        if Double(s) < t {
            let y = Double.log(t / Double(s))
            var pc: Double
            if L.method[j] == GPDFitMethod.insufficientPeaks.rawValue {
                let base = L.ring + j * cap
                let c = Int(L.ringCount[j])
                var below = 0
                for i in 0..<c where Double(abs(base[i])) > y { below += 1 }
                pc = rate * Double(below + 1) / Double(c + 1)
            } else {
                let g = GPD(shape: L.shape[j], scale: L.scale[j])
                pc = rate * g.survival(excess: y)
                if g.shape < 0 { pc = max(pc, rate / (ntl + 1)) }
            }
            return p0 + (1 - p0) * pc
        }
        return max(sketchCDF(j, Double(s)), p0 + (1 - p0) * rate)
    }

    /// The calibration sketch's CDF at `v` (quantiles at level·i/16; `level` at and above the top).
    func sketchCDF(_ j: Int, _ v: Double) -> Double {
        let sk = storage.sketch + j * Self.sketchPoints
        let m = Self.sketchPoints
        if v <= Double(sk[0]) { return 0 }
        if v >= Double(sk[m - 1]) { return configuration.level }
        var lo = 0, hi = m - 1
        while hi - lo > 1 { let mid = (lo + hi) / 2; if Double(sk[mid]) <= v { lo = mid } else { hi = mid } }
        let a = Double(sk[lo]), b = Double(sk[hi])
        let f = b > a ? (v - a) / (b - a) : 1
        return configuration.level * (Double(lo) + f) / Double(m - 1)
    }

    /// The tail a value belongs to and its probability there: the smaller of the watched tails'
    /// probabilities (`upper` wins ties). Both are on the same scale (`−log10 p` compares them).
    public func tail(filter j: Int, value s: Float, newest: Bool = false) -> (p: Double, direction: TailDirection) {
        let tails = configuration.tails
        let pu = tails.hasUpper ? upperTailProbability(filter: j, value: s) : .infinity
        let pl = tails.hasLower ? lowerTailProbability(filter: j, value: s, newest: newest) : .infinity
        return pl < pu ? (pl, .lower) : (pu, .upper)
    }

    /// Which tail filter j's value `s` ranks in (see `tail(filter:value:newest:)`).
    public func direction(filter j: Int, value s: Float, newest: Bool = false) -> TailDirection {
        tail(filter: j, value: s, newest: newest).direction
    }

    /// What is wrong with filter j's fitted lower tail, or nil: the Float columns are the exact
    /// thresholds' encodings, the zero mode follows from the calibration zeros. For the restore
    /// (a snapshot must not smuggle in state the kernel would misread) and the invariants.
    func lowerTailProblem(_ j: Int) -> String? {
        guard let L = storage.lower else { return nil }
        let t = L.thrD[j], z = L.extD[j]
        guard t.isFinite, t >= 0, z >= 0, z <= t else { return "lower thresholds t = \(t), z = \(z)" }
        guard L.thr[j] == Self.floatUp(t) else { return "lower Float threshold is not t_low rounded up" }
        guard L.scale[j] > 0, L.shape[j].isFinite, L.method[j] != 255 else { return "lower fit \(L.method[j]), scale \(L.scale[j])" }
        let nCal = UInt64(configuration.calibration)
        guard L.calZeros[j] <= nCal, L.calZeros[j] <= L.zeros[j] else { return "calibration zeros \(L.calZeros[j])" }
        let p0 = Double(L.calZeros[j]) / Double(nCal)
        switch ZeroMode(rawValue: L.zeroMode[j]) {
        case .extreme?:
            guard p0 < configuration.tailQ, L.ext[j] == max(Self.floatUp(z), Float.leastNonzeroMagnitude) else { return "zero mode extreme: p0 \(p0), ext \(L.ext[j]), z \(z)" }
        case .watch?:
            guard p0 >= configuration.tailQ, p0 < 1, L.ext[j] == 0, L.ext[j].sign == .minus, z == 0 else { return "zero watch: p0 \(p0), ext \(L.ext[j])" }
        case .off?:
            guard p0 == 1, L.ext[j] == 0, L.ext[j].sign == .plus else { return "zero mode off: p0 \(p0), ext \(L.ext[j])" }
        case nil:
            return "zero mode \(L.zeroMode[j])"
        }
        return nil
    }

    // MARK: - Introspection

    /// Filters whose values were lower extremes in the last `update` (valid until the next one), ascending.
    public var lastLowerExtremes: UnsafeBufferPointer<Int32> {
        UnsafeBufferPointer(start: storage.lower?.extremeOut, count: storage.lower == nil ? 0 : lowerExtremeCount)
    }

    /// Everything known about filter j's lower tail (nil when the bank does not watch it). O(1).
    public func lowerReport(filter j: Int) -> LowerTailReport? {
        precondition(j >= 0 && j < filterCount)
        guard let L = storage.lower else { return nil }
        let tail: TailModel
        switch L.method[j] {
        case 255: tail = .calibrating
        case GPDFitMethod.insufficientPeaks.rawValue: tail = .empirical
        case GPDFitMethod.exponential.rawValue: tail = .exponential
        case GPDFitMethod.moments.rawValue: tail = .moments
        default: tail = .gpd
        }
        return LowerTailReport(filter: j, threshold: L.thrD[j], extremeThreshold: L.extD[j], shape: L.shape[j], scale: L.scale[j], tail: tail,
                               n: isCalibrated ? nLower(j) : 0, peaks: ntLower(j), peaksInRing: Int(L.ringCount[j]), peaksSinceFit: Int(L.sinceFit[j]),
                               extremes: L.extremesTotal[j], due: L.isDue[j], zeroMode: ZeroMode(rawValue: L.zeroMode[j]) ?? .off,
                               calibrationZeros: L.calZeros[j], zeros: L.zeros[j], zeroRun: L.zeroLast[j] == rows ? Int(L.zeroRun[j]) : 0,
                               zeroRunThreshold: L.zeroMode[j] == ZeroMode.watch.rawValue ? Int(zeroRunThreshold(j)) : nil)
    }

    /// One filter's lower tail (for queries, reports and tests). `threshold` is `t_low` (0 when the
    /// filter had no positive values in calibration), `extremeThreshold` `z_low` (0: no positive
    /// value is extreme), `n` the positive values seen.
    public struct LowerTailReport: Sendable, Hashable, Codable {
        public var filter: Int
        public var threshold: Double
        public var extremeThreshold: Double
        public var shape: Double
        public var scale: Double
        public var tail: TailModel
        public var n: UInt64
        public var peaks: UInt64
        public var peaksInRing: Int
        public var peaksSinceFit: Int
        public var extremes: UInt64
        public var due: Bool
        public var zeroMode: ZeroMode
        public var calibrationZeros: UInt64
        public var zeros: UInt64
        /// Consecutive zeros ending at the newest row (0 if its value was not 0).
        public var zeroRun: Int
        /// `r*` (watch mode only).
        public var zeroRunThreshold: Int?
    }
}
