import SaliencyCore
import CKernels

extension FilterBank {
    // MARK: - Update

    /// Absorbs one prediction row (K saliency values), or rejects it unchanged.
    @discardableResult
    public func update(_ row: UnsafeBufferPointer<Float>) -> RowResult {
        if let reason = validate(row) {
            rejected[reason, default: 0] += 1
            extremeCount = 0
            lowerExtremeCount = 0
            checkInvariantsIfEnabled()
            return .rejected(reason)
        }
        return updateValidated(row)
    }

    /// `update` for rows already validated (width K, finite, ≥ 0). Precondition checked in debug builds.
    @discardableResult
    public func updateValidated(_ row: UnsafeBufferPointer<Float>) -> RowResult {
        assert(validate(row) == nil, "updateValidated called with an invalid row")
        let result = absorb(row)
        checkInvariantsIfEnabled()
        return result
    }

    /// The body of `updateValidated`.
    @inline(__always)
    private func absorb(_ row: UnsafeBufferPointer<Float>) -> RowResult {
        extremeCount = 0
        lowerExtremeCount = 0
        rows &+= 1
        if let c = storage.calibration {
            (c + calibSeen * filterCount).update(from: row.baseAddress!, count: filterCount)
            calibSeen += 1
            if calibSeen == configuration.calibration {
                finishCalibration()
                return RowResult(rejected: nil, calibrated: true, peaks: 0, extremes: 0, refits: filterCount)
            }
            return RowResult(rejected: nil, calibrated: false, peaks: 0, extremes: 0, refits: 0)
        }
        var peaks: Int
        if storage.driftRing != nil {
            peaks = scanDrift(row.baseAddress!)
        } else if configuration.tails == .both {
            peaks = scanBoth(row.baseAddress!)   // one pass over the row for both tails
        } else {
            peaks = scan(row.baseAddress!)
            if storage.lower != nil { peaks &+= scanLower(row.baseAddress!) &- lowerExtremeCount }
        }
        blockFill += 1
        if blockFill == Self.blockRows { mergeMoments() }
        var refits = 0
        if configuration.refitsPerRow > 0 {
            refitCredit = min(refitCredit + configuration.refitsPerRow, max(1, configuration.refitsPerRow))
            while refitCredit >= 1, queueCount + lowerQueueCount > 0 {
                if refitNextDueAny() {
                    refitCredit -= 1
                    refits += 1
                }
            }
        }
        return RowResult(rejected: nil, calibrated: false, peaks: peaks, extremes: extremeCount, refits: refits, lowerExtremes: lowerExtremeCount)
    }

    /// The vector pass (`scan_row` of the bank's `kernels`, Sources/CKernels: AVX2 or SSE2,
    /// bit-identical results): per filter it updates the moment block, counts a peak (`s > t`) in
    /// `sinceFit`, and flags an *event* when the value is an extreme (`s > z`), or a peak that is
    /// the m-th since the last sample (it enters the ring) or the `refitAfterPeaks`-th since the
    /// last fit (the filter becomes due). Only events reach Swift code per filter: about
    /// `peaks/m + extremes` per row, their ring lines prefetched first so the misses overlap.
    /// Returns the number of peaks (extremes excluded).
    @inline(__always)
    func scan(_ row: UnsafePointer<Float>) -> Int {
        var columns = saliency_scan_columns(
            thr: storage.thr, ext: storage.ext, shift: storage.shift, bsum: storage.bsum, bsumsq: storage.bsumsq, since: storage.sinceFit,
            strideMask: UInt32(truncatingIfNeeded: peakStride - 1),
            dueAt: UInt32(truncatingIfNeeded: configuration.refitAfterPeaks), count: Int64(filterCount))
        var peaks: Int64 = 0
        let groups = Int(scanRow(&columns, row, storage.eventBase, storage.eventMask, &peaks))
        // Events touch cold per-filter columns at random: request them all first (independent
        // misses overlap), then the ring lines (their address needs `head`), then do the work.
        forEachEvent(groups) { j in
            saliency_prefetch_read(storage.head + j)
            saliency_prefetch_read(storage.thrD + j)
            saliency_prefetch_read(storage.ringCount + j)
            saliency_prefetch_read(storage.frozen + j)
        }
        forEachEvent(groups) { j in saliency_prefetch_write(storage.ring + (j &* cap &+ Int(storage.head[j]))) }
        forEachEvent(groups) { j in handleEvent(j, row[j]) }
        return Int(peaks) &- extremeCount
    }

    /// Calls `body` with the filter of every event lane of the last scan's `groups` groups, ascending.
    @inline(__always)
    func forEachEvent(_ groups: Int, _ body: (Int) -> Void) {
        for g in 0..<groups {
            let base = Int(storage.eventBase[g])
            var m = storage.eventMask[g]
            while m != 0 {
                body(base &+ m.trailingZeroBitCount)
                m &= m &- 1
            }
        }
    }

    /// An event of the vector pass for filter j, whose peak is already counted in `sinceFit`.
    @inline(__always)
    func handleEvent(_ j: Int, _ s: Float) {
        let extreme = s > storage.ext[j]
        if extreme { recordExtreme(j) }
        let since = storage.sinceFit[j]
        if since == 0 { storage.ntAtFit[j] &+= 1 << 32 }   // UInt32 wrap (2³² peaks without a fit)
        // An alerting (frozen) filter learns nothing until it resolves; N_t still counts.
        guard !storage.frozen[j] else { return }
        if since & UInt32(truncatingIfNeeded: peakStride - 1) == 0 {
            // An extreme enters right-censored at z − t: the tail learns that *something*
            // exceeded z, never how far. Stored negated (sign bit = censored): no flag needed.
            storePeak(j, extreme ? -Float(storage.extD[j] - storage.thrD[j]) : Float(Double(s) - storage.thrD[j]))
        }
        if since == UInt32(truncatingIfNeeded: configuration.refitAfterPeaks) { markDue(j) }
    }

    @inline(__always)
    func recordExtreme(_ j: Int) {
        storage.extremesTotal[j] &+= 1
        storage.blockExtremes[j] &+= 1
        storage.extremeOut[extremeCount] = Int32(truncatingIfNeeded: j)
        extremeCount &+= 1
    }

    /// DSPOT's pass (Siffer et al. 2017 §4.3): each value is compared as the residual
    /// `r = s − M_j`, `M_j` the mean of filter j's last d absorbed values, in double precision
    /// against `t_j` and `z_j`; absorbed (non-extreme) values enter the drift window; the z-score
    /// moments stay on the raw values. Scalar, O(K); used only when `drift_window > 0`.
    func scanDrift(_ row: UnsafePointer<Float>) -> Int {
        let k = filterCount, d = configuration.driftWindow
        let dd = Double(d)
        guard let ringD = storage.driftRing, let headD = storage.driftHead, let sumD = storage.driftSum else { return 0 }
        var peaks = 0
        for j in 0..<k {
            let s = row[j]
            let r = Double(s) - sumD[j] / dd
            let extreme = r > storage.extD[j]
            if !extreme {
                let dv = s - storage.shift[j]
                storage.bsum[j] += dv
                storage.bsumsq[j] += dv * dv
                Self.pushDrift(ringD + j * d, &headD[j], &sumD[j], s, d)
            }
            if r > storage.thrD[j] {
                storage.sinceFit[j] &+= 1
                if !extreme { peaks &+= 1 }
                let since = storage.sinceFit[j]
                if extreme || since & UInt32(truncatingIfNeeded: peakStride - 1) == 0 || since == UInt32(truncatingIfNeeded: configuration.refitAfterPeaks) {
                    if extreme { recordExtreme(j) }
                    if since == 0 { storage.ntAtFit[j] &+= 1 << 32 }
                    if !storage.frozen[j] {
                        if since & UInt32(truncatingIfNeeded: peakStride - 1) == 0 { storePeak(j, extreme ? -Float(storage.extD[j] - storage.thrD[j]) : Float(r - storage.thrD[j])) }
                        if since == UInt32(truncatingIfNeeded: configuration.refitAfterPeaks) { markDue(j) }
                    }
                }
            }
        }
        return peaks
    }

    /// Pushes `v` into a full drift window (capacity d) at `head`, keeping `sum` exact.
    @inline(__always)
    static func pushDrift(_ w: UnsafeMutablePointer<Float>, _ head: inout UInt32, _ sum: inout Double, _ v: Float, _ d: Int) {
        let h = Int(head)
        sum += Double(v) - Double(w[h])
        w[h] = v
        if h + 1 == d {
            head = 0
            var exact = 0.0
            for i in 0..<d { exact += Double(w[i]) }
            sum = exact
        } else {
            head = UInt32(h + 1)
        }
    }

    /// DSPOT's current drift mean `M_j` (nil without drift).
    public func driftMean(_ j: Int) -> Double? {
        guard let sumD = storage.driftSum else { return nil }
        return sumD[j] / Double(configuration.driftWindow)
    }

    /// The value compared with the thresholds: `s`, or the DSPOT residual `s − M_j`.
    @inline(__always) func comparable(_ j: Int, _ s: Float) -> Double {
        guard let sumD = storage.driftSum else { return Double(s) }
        return Double(s) - sumD[j] / Double(configuration.driftWindow)
    }

    /// Appends `excess` to filter j's ring (the oldest entry is forgotten when full).
    @inline(__always)
    func storePeak(_ j: Int, _ excess: Float) {
        let h = Int(storage.head[j])
        storage.ring[j &* cap &+ h] = excess
        storage.head[j] = h &+ 1 == cap ? 0 : UInt32(h &+ 1)
        if Int(storage.ringCount[j]) < cap { storage.ringCount[j] &+= 1 }
    }

    @inline(__always)
    func markDue(_ j: Int) {
        storage.isDue[j] = true
        guard !storage.inQueue[j] else { return }
        storage.inQueue[j] = true
        var tail = queueHead + queueCount
        if tail >= filterCount { tail -= filterCount }
        storage.queue[tail] = Int32(j)
        queueCount += 1
    }

    /// Merges the current moment block into the Welford state (Chan et al.) and re-centres the
    /// block on the new mean (`saliency_merge_moments`, vectorized; the formula is the one of
    /// `moments(_:)`). O(K).
    func mergeMoments() {
        var columns = saliency_merge_columns(shift: storage.shift, bsum: storage.bsum, bsumsq: storage.bsumsq, blockExtremes: storage.blockExtremes,
                                             count_: storage.wCount, mean: storage.wMean, m2: storage.wM2, count: Int64(filterCount),
                                             rowsInBlock: Double(blockFill))
        mergeMomentsKernel(&columns)
        blockFill = 0
    }

}
