import SaliencyCore
import CKernels

extension FilterBank {
    // MARK: - Calibration

    /// `source`: the `calibration × K` rows to calibrate from (default: the bank's own buffer; a
    /// cross-fit passes half of its parent's, ModelShiftCrossFit.swift).
    func finishCalibration(from source: UnsafePointer<Float>? = nil) {
        guard let c = source ?? storage.calibration.map({ UnsafePointer($0) }) else { return }
        let k = filterCount, nCal = configuration.calibration
        let col = UnsafeMutablePointer<Float>.allocate(capacity: nCal)
        let sorted = UnsafeMutablePointer<Float>.allocate(capacity: nCal)
        defer { col.deallocate(); sorted.deallocate() }
        let d = configuration.driftWindow
        let resid = UnsafeMutablePointer<Float>.allocate(capacity: nCal)
        defer { resid.deallocate() }
        for j in 0..<k {
            for r in 0..<nCal { col[r] = c[r &* k &+ j] }
            let column = UnsafeBufferPointer(start: col, count: nCal)
            if let ringD = storage.driftRing, let headD = storage.driftHead, let sumD = storage.driftSum {
                // The first d values seed the window; the other n − d are calibrated as residuals.
                let w = ringD + j * d
                var sum = 0.0
                for i in 0..<d { w[i] = col[i]; sum += Double(col[i]) }
                var head: UInt32 = 0
                for i in d..<nCal {
                    resid[i - d] = Float(Double(col[i]) - sum / Double(d))
                    Self.pushDrift(w, &head, &sum, col[i], d)
                }
                headD[j] = head
                sumD[j] = sum
                calibrateFilter(j, column: column, residuals: UnsafeBufferPointer(start: resid, count: nCal - d), sorted: sorted)
            } else {
                calibrateFilter(j, column: column, residuals: column, sorted: sorted)
            }
        }
        if source == nil { runCrossFitIfRequested(rows: c) }
        storage.releaseCalibration()
        calibSeen = nCal
    }

    /// Numpy's default ("linear", type 7) quantile of sorted data.
    static func quantile(sorted v: UnsafePointer<Float>, count n: Int, _ p: Double) -> Double {
        let pos = p * Double(n - 1)
        let lo = Int(pos.rounded(.down))
        let hi = min(lo + 1, n - 1)
        let frac = pos - Double(lo)
        return Double(v[lo]) + frac * (Double(v[hi]) - Double(v[lo]))
    }

    static func floatDown(_ d: Double) -> Float {
        var f = Float(d)
        if Double(f) > d { f = f.nextDown }
        return f
    }

    /// `column`: the raw values (moments); `residuals`: what the thresholds are fitted to (the same
    /// values without drift, DSPOT residuals with it).
    func calibrateFilter(_ j: Int, column: UnsafeBufferPointer<Float>, residuals: UnsafeBufferPointer<Float>, sorted: UnsafeMutablePointer<Float>) {
        let n = column.count
        // Moments: two-pass (exact batch reference for the streaming merge).
        var sum = 0.0
        for v in column { sum += Double(v) }
        let mean = sum / Double(n)
        var m2 = 0.0
        for v in column { let d = Double(v) - mean; m2 += d * d }
        storage.wCount[j] = Double(n); storage.wMean[j] = mean; storage.wM2[j] = m2; storage.shift[j] = Float(mean)
        // Threshold and sketch.
        let nr = residuals.count
        sorted.update(from: residuals.baseAddress!, count: nr)
        var sortedBuffer = UnsafeMutableBufferPointer(start: sorted, count: nr)
        sortedBuffer.sort()
        let t = Self.quantile(sorted: sorted, count: nr, configuration.level)
        storage.thrD[j] = t
        storage.thr[j] = Self.floatDown(t)
        for i in 0..<Self.sketchPoints {
            let p = configuration.level * Double(i) / Double(Self.sketchPoints - 1)
            storage.sketch[j * Self.sketchPoints + i] = Float(Self.quantile(sorted: sorted, count: nr, p))
        }
        // Peaks in arrival order; the ring keeps the newest `cap`.
        var nt: UInt64 = 0
        let base = storage.ring + j * cap
        var h = 0, count = 0
        for v in residuals where Double(v) > t {
            base[h] = Float(Double(v) - t)
            h += 1; if h == cap { h = 0 }
            count = min(count + 1, cap)
            nt += 1
        }
        storage.head[j] = UInt32(h); storage.ringCount[j] = UInt32(count); storage.ntAtFit[j] = nt; storage.sinceFit[j] = 0
        fitFilter(j)
        if !configuration.tails.hasUpper { storage.thr[j] = .infinity }   // `lower`: no upper peaks
        calibrateLower(j, column: column, sorted: sorted)
    }

}
