import SaliencyCore

extension FilterBank {
    /// Checks every invariant named in the type's documentation ("Invariants") and traps with
    /// the first one broken. O(K · maxPeaks). Callable in any build (tests do); the bank itself
    /// calls it after every `update`, refit, `setFrozen` and restore only when compiled with
    /// `-DSALIENCY_INVARIANTS` (CI runs the EVTOnline tests once that way), which voids every
    /// stated cost: `update` becomes O(K · maxPeaks).
    public func checkInvariants() {
        let s = storage
        let k = filterCount
        let nCal = configuration.calibration
        let calibrating = s.calibration != nil
        func check(_ ok: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
            precondition(ok(), "FilterBank invariant: \(message())")
        }
        // Shape.
        check(k >= 1 && cap == configuration.maxPeaks, "K = \(k), ring capacity \(cap) vs max_peaks \(configuration.maxPeaks)")
        check(peakStride >= 1 && peakStride & (peakStride - 1) == 0, "peak stride \(peakStride) is not a power of two")
        check((s.driftRing != nil) == (configuration.driftWindow > 0), "drift columns present ⇔ drift_window > 0")
        // Phase.
        if calibrating {
            check(calibSeen >= 0 && calibSeen < nCal, "calibrating with \(calibSeen) of \(nCal) rows")
            check(rows == UInt64(calibSeen), "calibrating: rows \(rows) ≠ calibration rows \(calibSeen)")
        } else {
            check(calibSeen == nCal, "monitoring with calibration progress \(calibSeen) of \(nCal)")
            check(rows >= UInt64(nCal), "monitoring after \(rows) rows < calibration \(nCal)")
        }
        // Scheduler scalars.
        check(queueHead >= 0 && queueHead < k && queueCount >= 0 && queueCount <= k, "queue head \(queueHead), count \(queueCount), K \(k)")
        check(blockFill >= 0 && blockFill < Self.blockRows, "block fill \(blockFill)")
        check(refitCredit >= 0 && refitCredit <= max(1, configuration.refitsPerRow), "refit credit \(refitCredit)")
        check(extremeCount >= 0 && extremeCount <= k, "extreme count \(extremeCount)")
        // The queue: distinct filters, each flagged inQueue, and no other filter flagged.
        var queued = 0
        for i in 0..<queueCount {
            let q = Int(s.queue[(queueHead + i) % k])
            check(q >= 0 && q < k, "queue entry \(i) = \(q) out of range")
            check(s.inQueue[q], "queued filter \(q) not flagged inQueue")
        }
        for j in 0..<k where s.inQueue[j] { queued += 1 }
        check(queued == queueCount, "\(queued) filters flagged inQueue, queue holds \(queueCount) (a filter queued twice?)")
        // The last row's extremes: ascending filters.
        var previous = -1
        for i in 0..<extremeCount {
            let j = Int(s.extremeOut[i])
            check(j > previous && j < k, "lastExtremes[\(i)] = \(j) not ascending or out of range")
            previous = j
        }
        let monitoringRows = rows &- UInt64(nCal)
        let dueAt = UInt32(truncatingIfNeeded: configuration.refitAfterPeaks)
        for j in 0..<k {
            // Ring.
            let h = Int(s.head[j]), c = Int(s.ringCount[j])
            check(h < cap && c <= cap, "filter \(j): ring head \(h), count \(c), capacity \(cap)")
            check(c == cap || h == c, "filter \(j): ring not full (\(c)) but head \(h) ≠ count")
            let base = s.ring + j * cap
            for i in 0..<c { check(base[i].isFinite, "filter \(j): ring entry \(i) = \(base[i])") }
            check(UInt64(c) <= nt(j), "filter \(j): \(c) peaks in the ring > N_t = \(nt(j))")
            // Due and queued.
            if s.isDue[j] {
                check(s.inQueue[j], "filter \(j) due but not queued")
                check(s.sinceFit[j] >= dueAt || s.ntAtFit[j] >> 32 != 0, "filter \(j) due with \(s.sinceFit[j]) peaks since its fit < \(dueAt)")
            }
            if calibrating {
                check(s.method[j] == 255 && !s.isDue[j] && !s.inQueue[j] && c == 0, "filter \(j) fitted, due or with peaks while calibrating")
                check(s.extremesTotal[j] == 0 && s.sinceFit[j] == 0, "filter \(j) counted peaks or extremes while calibrating")
                continue
            }
            check(s.frozen[j] || s.sinceFit[j] < dueAt || s.isDue[j], "filter \(j): \(s.sinceFit[j]) peaks since its fit ≥ \(dueAt), not frozen, not due")
            check(nt(j) <= nPOT(j), "filter \(j): N_t = \(nt(j)) > n = \(nPOT(j))")
            // Thresholds and fit.
            let t = s.thrD[j], z = s.extD[j]
            check(s.method[j] != 255 && GPDFitMethod(rawValue: s.method[j]) != nil, "filter \(j): fit method \(s.method[j])")
            check(t.isFinite && !z.isNaN && t <= z, "filter \(j): thresholds t = \(t), z = \(z) not ordered")
            if configuration.tails.hasUpper {
                check(s.thr[j] == Self.floatDown(t) && s.ext[j] == Self.floatDown(z), "filter \(j): Float thresholds are not the exact ones rounded down")
            } else {
                check(s.thr[j] == .infinity && s.ext[j] == .infinity, "filter \(j): tails = lower but the upper Float thresholds are finite")
            }
            check(s.scale[j] > 0 && s.shape[j].isFinite, "filter \(j): scale \(s.scale[j]), shape \(s.shape[j])")
            if s.method[j] == GPDFitMethod.insufficientPeaks.rawValue { check(z == .infinity, "filter \(j): no fit but z = \(z)") }
            let sk = s.sketch + j * Self.sketchPoints
            for i in 1..<Self.sketchPoints { check(sk[i - 1] <= sk[i], "filter \(j): sketch decreases at \(i)") }
            // Moments: every monitoring row was absorbed or extreme.
            let absorbedInBlock = blockFill - Int(s.blockExtremes[j])
            check(absorbedInBlock >= 0, "filter \(j): \(s.blockExtremes[j]) block extremes > block fill \(blockFill)")
            check(s.extremesTotal[j] <= monitoringRows, "filter \(j): \(s.extremesTotal[j]) extremes in \(monitoringRows) monitoring rows")
            check(s.wCount[j] + Double(absorbedInBlock) + Double(s.extremesTotal[j]) == Double(rows),
                  "filter \(j): moments count \(s.wCount[j]) + block \(absorbedInBlock) + extremes \(s.extremesTotal[j]) ≠ rows \(rows)")
            check(s.wM2[j] >= 0 && s.wMean[j].isFinite, "filter \(j): mean \(s.wMean[j]), M2 \(s.wM2[j])")
        }
        checkLowerInvariants(check)
        // DSPOT windows (seeded at the end of calibration).
        if let ringD = s.driftRing, let headD = s.driftHead, let sumD = s.driftSum, !calibrating {
            let d = configuration.driftWindow
            for j in 0..<k {
                check(Int(headD[j]) < d && sumD[j].isFinite, "filter \(j): drift head \(headD[j]), sum \(sumD[j])")
                var exact = 0.0, magnitude = 0.0
                for i in 0..<d { exact += Double(ringD[j * d + i]); magnitude += abs(Double(ringD[j * d + i])) }
                check(abs(sumD[j] - exact) <= 1e-9 * magnitude + 1e-300, "filter \(j): drift sum \(sumD[j]) ≠ window sum \(exact)")
            }
        }
    }

    /// The lower tail's invariants (docs/statistics.md, "Two tails"): the same ring, queue and
    /// threshold rules as the upper tail with `t_low`, `z_low` rounded toward +∞, `0 ≤ z_low ≤
    /// t_low`, the zero mode consistent with the calibration zero fraction and its Float encoding.
    func checkLowerInvariants(_ check: (@autoclosure () -> Bool, @autoclosure () -> String) -> Void) {
        let k = filterCount
        guard let L = storage.lower else {
            check(!configuration.tails.hasLower, "tails = \(configuration.tails.rawValue) without lower columns")
            check(lowerQueueCount == 0 && lowerExtremeCount == 0, "lower scalars without a lower tail")
            return
        }
        check(configuration.tails.hasLower, "lower columns with tails = upper")
        check(lowerQueueHead >= 0 && lowerQueueHead < k && lowerQueueCount >= 0 && lowerQueueCount <= k, "lower queue head \(lowerQueueHead), count \(lowerQueueCount)")
        for i in 0..<lowerQueueCount {
            let q = Int(L.queue[(lowerQueueHead + i) % k])
            check(q >= 0 && q < k && L.inQueue[q], "lower queue entry \(i) = \(q) invalid")
        }
        var queued = 0
        for j in 0..<k where L.inQueue[j] { queued += 1 }
        check(queued == lowerQueueCount, "\(queued) filters flagged lower inQueue, queue holds \(lowerQueueCount)")
        var previous = -1
        for i in 0..<lowerExtremeCount {
            let j = Int(L.extremeOut[i])
            check(j > previous && j < k, "lastLowerExtremes[\(i)] = \(j) not ascending or out of range")
            previous = j
        }
        let calibrating = storage.calibration != nil
        let dueAt = UInt32(truncatingIfNeeded: configuration.refitAfterPeaks)
        for j in 0..<k {
            let h = Int(L.head[j]), c = Int(L.ringCount[j])
            check(h < cap && c <= cap && (c == cap || h == c), "filter \(j): lower ring head \(h), count \(c)")
            let base = L.ring + j * cap
            for i in 0..<c { check(base[i].isFinite, "filter \(j): lower ring entry \(i) = \(base[i])") }
            check(UInt64(c) <= ntLower(j), "filter \(j): \(c) lower peaks in the ring > N_t")
            if L.isDue[j] { check(L.inQueue[j], "filter \(j) lower due but not queued") }
            if calibrating {
                check(L.method[j] == 255 && !L.isDue[j] && c == 0 && L.extremesTotal[j] == 0, "filter \(j): lower tail fitted while calibrating")
                continue
            }
            check(L.frozen[j] || L.sinceFit[j] < dueAt || L.isDue[j], "filter \(j): \(L.sinceFit[j]) lower peaks since its fit, not frozen, not due")
            check(ntLower(j) <= nLower(j) || L.zeroMode[j] == ZeroMode.off.rawValue, "filter \(j): lower N_t \(ntLower(j)) > n₊ \(nLower(j))")
            let problem = lowerTailProblem(j)
            check(problem == nil, "filter \(j): \(problem ?? "")")
            check(L.calZeros[j] <= L.zeros[j] && L.zeros[j] <= rows && L.extremesTotal[j] <= rows, "filter \(j): lower counts")
        }
    }

    /// `checkInvariants()` in builds with `-DSALIENCY_INVARIANTS`; nothing otherwise.
    @inline(__always)
    func checkInvariantsIfEnabled() {
        #if SALIENCY_INVARIANTS
        checkInvariants()
        #endif
    }
}
