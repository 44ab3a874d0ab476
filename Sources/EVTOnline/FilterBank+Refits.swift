import SaliencyCore
import CKernels

extension FilterBank {
    // MARK: - Refits

    /// Refits up to `limit` due filters (FIFO). Returns how many were refit. For idle time.
    @discardableResult
    public func refitDue(limit: Int = .max) -> Int {
        var done = 0
        while done < limit, queueCount + lowerQueueCount > 0 { if refitNextDueAny() { done += 1 } }
        checkInvariantsIfEnabled()
        return done
    }

    /// Refits one filter now (on demand), whether due or not: every tail the bank watches.
    public func refit(filter j: Int) {
        precondition(j >= 0 && j < filterCount)
        guard isCalibrated else { return }
        fitFilter(j)
        if storage.lower != nil { fitLower(j) }
        checkInvariantsIfEnabled()
    }

    /// One budgeted refit from the upper or the lower queue (alternating when both hold filters).
    /// Returns whether a fit ran.
    func refitNextDueAny() -> Bool {
        let lower = lowerQueueCount > 0 && (queueCount == 0 || refitLowerNext)
        refitLowerNext.toggle()
        return lower ? refitNextLowerDue() : refitNextDue()
    }

    func refitNextLowerDue() -> Bool {
        guard let L = storage.lower else { return false }
        let j = Int(L.queue[lowerQueueHead])
        lowerQueueHead += 1; if lowerQueueHead == filterCount { lowerQueueHead = 0 }
        lowerQueueCount -= 1
        L.inQueue[j] = false
        guard L.isDue[j] else { return false }
        fitLower(j)
        return true
    }

    /// Pops the oldest queued filter and refits it if still due (an on-demand refit may have
    /// served it already). Returns whether a fit ran.
    func refitNextDue() -> Bool {
        let j = Int(storage.queue[queueHead])
        queueHead += 1; if queueHead == filterCount { queueHead = 0 }
        queueCount -= 1
        storage.inQueue[j] = false
        guard storage.isDue[j] else { return false }
        fitFilter(j)
        return true
    }

    /// Grimshaw fit of one filter's ring (upper or lower tail), read oldest first and split into
    /// observed and censored excesses, so a refit is bit-identical to a batch fit on the same peaks
    /// in arrival order. `head` is the write position (the oldest entry once the ring is full).
    func fitRing(_ base: UnsafeMutablePointer<Float>, count: Int, head: Int) -> GPDFit {
        let start = count == cap ? head : 0
        var nObs = 0, nCens = 0
        for i in 0..<count {
            var idx = start + i
            if idx >= cap { idx -= cap }
            let v = base[idx]
            if v.sign == .minus { storage.censorScratch[nCens] = -v; nCens += 1 } else { storage.fitScratch[nObs] = v; nObs += 1 }
        }
        return fitter.fit(UnsafeBufferPointer(start: storage.fitScratch, count: nObs),
                          censored: UnsafeBufferPointer(start: storage.censorScratch, count: nCens), minPeaks: configuration.minPeaks)
    }

    /// Full Grimshaw fit on filter j's ring; recomputes z_j. Clears its due flag.
    func fitFilter(_ j: Int) {
        let fit = fitRing(storage.ring + j * cap, count: Int(storage.ringCount[j]), head: Int(storage.head[j]))
        refitCount &+= 1
        storage.ntAtFit[j] &+= UInt64(storage.sinceFit[j])
        storage.sinceFit[j] = 0
        storage.isDue[j] = false   // a storage.queue entry left behind is skipped when popped
        storage.shape[j] = fit.gpd.shape
        storage.scale[j] = fit.gpd.scale
        storage.method[j] = fit.method.rawValue
        if fit.method == .insufficientPeaks {
            storage.extD[j] = .infinity
            storage.ext[j] = .infinity
        } else {
            let n = Double(nPOT(j)), nt = Double(storage.ntAtFit[j])
            var z = POT.extremeThreshold(threshold: storage.thrD[j], gpd: fit.gpd, q: configuration.tailQ, n: n, peaks: nt)
            if !(z >= storage.thrD[j]) { z = storage.thrD[j] }   // q ≥ N_t/n: every peak is extreme (also catches NaN)
            storage.extD[j] = z
            storage.ext[j] = Self.floatDown(z)
        }
        // `tails = lower`: the upper tail is fitted (scores, reports) but never flags anything.
        if !configuration.tails.hasUpper { storage.ext[j] = .infinity }
    }

    /// `n_j`: valid rows (extremes count: they enter the tail as censored peaks).
    @inline(__always) func nPOT(_ j: Int) -> UInt64 { rows - UInt64(storage.driftRing == nil ? 0 : configuration.driftWindow) }
    @inline(__always) func nt(_ j: Int) -> UInt64 { storage.ntAtFit[j] + UInt64(storage.sinceFit[j]) }

    // MARK: - Freezing

    /// Holds filter `j`'s tail model fixed (`true`) or lets it learn again (`false`). The daemon
    /// freezes a filter while its alert fires. O(1).
    public func setFrozen(_ j: Int, _ on: Bool) {
        setFrozen(j, on, direction: .upper)
    }

    /// Holds the given tail of filter `j` fixed or lets it learn again (a lower-tail call on a
    /// bank without the lower tail does nothing). O(1).
    public func setFrozen(_ j: Int, _ on: Bool, direction: TailDirection) {
        precondition(j >= 0 && j < filterCount)
        if direction == .lower {
            guard let L = storage.lower else { return }
            L.frozen[j] = on
            if !on, isCalibrated, L.sinceFit[j] >= UInt32(truncatingIfNeeded: configuration.refitAfterPeaks) { markLowerDue(L, j) }
            checkInvariantsIfEnabled()
            return
        }
        storage.frozen[j] = on
        // Peaks kept counting while frozen; one that passed the refit mark then is due now.
        if !on, isCalibrated, storage.sinceFit[j] >= UInt32(truncatingIfNeeded: configuration.refitAfterPeaks) { markDue(j) }
        checkInvariantsIfEnabled()
    }

    public func isFrozen(_ j: Int) -> Bool { storage.frozen[j] }
    public func isFrozen(_ j: Int, direction: TailDirection) -> Bool {
        direction == .upper ? storage.frozen[j] : (storage.lower?.frozen[j] ?? false)
    }

}
