import SaliencyCore
import CKernels

extension FilterBank {
    // MARK: - Calibration

    /// `source`: the `calibration × K` rows to calibrate from (default: the bank's own buffer; a
    /// cross-fit passes half of its parent's, ModelShiftCrossFit.swift). `legacy`: gather one
    /// column at a time and sort with the standard library, the calibration end before 2026-12,
    /// kept as the reference of the equivalence tests (CalibrationGatherTests) and the benchmark.
    func finishCalibration(from source: UnsafePointer<Float>? = nil, legacy: Bool = false) {
        guard let c = source ?? storage.calibration.map({ UnsafePointer($0) }) else { return }
        calibrateColumns(c, block: legacy ? 1 : Self.calibrationGatherBlock(filterCount: filterCount, rows: configuration.calibration),
                         radix: !legacy)
        if source == nil { runCrossFitIfRequested(rows: c) }
        storage.releaseCalibration()
        calibSeen = configuration.calibration
    }

    /// Bytes of the block of gathered columns at most (`calibrationGatherBlock`).
    static let calibrationGatherBytes = 1 << 20

    /// Filters per block of the calibration end's column gather: as many as fit in
    /// `calibrationGatherBytes` (at most 64: 256 bytes of each row, 4 cache lines; at most K), at
    /// least 1.
    static func calibrationGatherBlock(filterCount: Int, rows: Int) -> Int {
        let (bytes, o) = rows.multipliedReportingOverflow(by: MemoryLayout<Float>.size)
        return max(1, min(64, filterCount, o ? 1 : calibrationGatherBytes / max(1, bytes)))
    }

    /// The scratch `finishCalibration` allocates on top of the bank's columns (the gathered block,
    /// the sort buffer, the radix sort's second buffer and its 4 × 256 counters, the DSPOT
    /// residuals) for `rows` calibration rows of `filterCount` values: at most
    /// 1 MiB + 16 bytes per row + 4 KiB (1 MiB + 12 bytes per row + 4 KiB up to 65,536 rows). Counted in `maximumBytes` and `crossFitTransientBytes`.
    /// Nil on overflow.
    static func calibrationScratchBytes(filterCount: Int, rows: Int) -> Int? {
        let (perRow, o) = (calibrationGatherBlock(filterCount: filterCount, rows: rows) + 3).multipliedReportingOverflow(by: MemoryLayout<Float>.size)
        let (total, o2) = perRow.multipliedReportingOverflow(by: rows)
        let (all, o3) = total.addingReportingOverflow(radixCounters * MemoryLayout<UInt32>.size)
        return o || o2 || o3 ? nil : all
    }

    /// Calibrates every filter from the row-major `calibration × K` rows `c`.
    ///
    /// - The columns are gathered `block` filters at a time: each row's `block` adjacent values
    ///   (a few cache lines of one page) are copied into `block` column buffers, so a row is
    ///   touched once per block rather than once per filter (`K · n` strided loads, one TLB miss
    ///   each at ResNet-50 width). Each filter sees exactly the column the per-filter gather gave.
    /// - `radix`: each filter's values are sorted by `radixSort` instead of the standard library's
    ///   comparison sort, which was more than half of the calibration end (perf, BENCHMARKS.md
    ///   "Calibration end"). Both give the same non-decreasing sequence; they can differ only in
    ///   the order of −0.0 and +0.0, which nothing downstream distinguishes (`quantile` of two
    ///   zeros is +0.0 whatever their signs, zeros are counted with `==`).
    ///
    /// So the bank is bit-identical to the one the legacy loop (`block` 1, no radix) gives.
    func calibrateColumns(_ c: UnsafePointer<Float>, block requested: Int, radix: Bool) {
        let k = filterCount, nCal = configuration.calibration
        let block = max(1, min(requested, k))
        let cols = UnsafeMutablePointer<Float>.allocate(capacity: block * nCal)
        let sorted = UnsafeMutablePointer<Float>.allocate(capacity: nCal)
        let radixScratch: UnsafeMutablePointer<UInt32>? = radix ? .allocate(capacity: nCal + Self.radixCounters) : nil
        defer { cols.deallocate(); sorted.deallocate(); radixScratch?.deallocate() }
        let d = configuration.driftWindow
        let resid = UnsafeMutablePointer<Float>.allocate(capacity: nCal)
        defer { resid.deallocate() }
        var j0 = 0
        while j0 < k {
            let w = min(block, k - j0)
            // Transpose rows × [j0, j0 + w) into w contiguous columns.
            if w == 1 {
                for r in 0..<nCal { cols[r] = c[r &* k &+ j0] }
            } else {
                for r in 0..<nCal {
                    let src = c + (r &* k &+ j0)
                    var dst = cols + r
                    for b in 0..<w { dst.pointee = src[b]; dst += nCal }
                }
            }
            for b in 0..<w {
                let j = j0 + b
                let col = cols + b * nCal
                let column = UnsafeBufferPointer(start: UnsafePointer(col), count: nCal)
                if let ringD = storage.driftRing, let headD = storage.driftHead, let sumD = storage.driftSum {
                    // The first d values seed the window; the other n − d are calibrated as residuals.
                    let window = ringD + j * d
                    var sum = 0.0
                    for i in 0..<d { window[i] = col[i]; sum += Double(col[i]) }
                    var head: UInt32 = 0
                    for i in d..<nCal {
                        resid[i - d] = Float(Double(col[i]) - sum / Double(d))
                        Self.pushDrift(window, &head, &sum, col[i], d)
                    }
                    headD[j] = head
                    sumD[j] = sum
                    calibrateFilter(j, column: column, residuals: UnsafeBufferPointer(start: resid, count: nCal - d), sorted: sorted, radix: radixScratch)
                } else {
                    calibrateFilter(j, column: column, residuals: column, sorted: sorted, radix: radixScratch)
                }
            }
            j0 += w
        }
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
    /// values without drift, DSPOT residuals with it). `radix`: `radixSort`'s scratch (nil: the
    /// standard library's sort).
    func calibrateFilter(_ j: Int, column: UnsafeBufferPointer<Float>, residuals: UnsafeBufferPointer<Float>, sorted: UnsafeMutablePointer<Float>,
                         radix: UnsafeMutablePointer<UInt32>?) {
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
        // The comparison sort when there is no radix scratch, or when radixSort declines (a NaN).
        if !(radix.map { Self.radixSort(sorted, count: nr, scratch: $0) } ?? false) {
            var sortedBuffer = UnsafeMutableBufferPointer(start: sorted, count: nr)
            sortedBuffer.sort()
        }
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


    // MARK: - Radix sort

    /// Counters of `radixSort` (4 byte passes × 256).
    static let radixCounters = 4 * 256

    /// Sorts `n` floats ascending in place: LSD radix sort, one byte of the order-preserving key
    /// per pass (the sign bit flipped for positives, every bit for negatives, so −0.0 < +0.0),
    /// passes whose byte is the same for every value skipped. `scratch`: `n + radixCounters`.
    /// Returns false, with `v` unchanged, when a value is NaN (no total order to agree with the
    /// comparison sort's; validated rows never have one): the caller then sorts by comparison.
    static func radixSort(_ v: UnsafeMutablePointer<Float>, count n: Int, scratch: UnsafeMutablePointer<UInt32>) -> Bool {
        guard n > 1 else { return true }
        guard n < Int(UInt32.max) else { return false }
        let counts = scratch + n
        counts.initialize(repeating: 0, count: radixCounters)
        return v.withMemoryRebound(to: UInt32.self, capacity: n) { a -> Bool in
            for i in 0..<n where a[i] & 0x7FFF_FFFF > 0x7F80_0000 { return false }
            for i in 0..<n {
                let u = a[i]
                let key = u ^ (UInt32(bitPattern: Int32(bitPattern: u) >> 31) | 0x8000_0000)
                a[i] = key
                counts[Int(key & 0xFF)] &+= 1
                counts[256 &+ Int((key >> 8) & 0xFF)] &+= 1
                counts[512 &+ Int((key >> 16) & 0xFF)] &+= 1
                counts[768 &+ Int(key >> 24)] &+= 1
            }
            var src = a, dst = scratch
            for pass in 0..<4 {
                let c = counts + pass &* 256
                let shift = UInt32(pass &* 8)
                if c[Int((src[0] >> shift) & 0xFF)] == UInt32(n) { continue }   // one bucket: nothing moves
                var total: UInt32 = 0
                for b in 0..<256 { let x = c[b]; c[b] = total; total &+= x }
                for i in 0..<n {
                    let key = src[i]
                    let b = Int((key >> shift) & 0xFF)
                    dst[Int(c[b])] = key
                    c[b] &+= 1
                }
                swap(&src, &dst)
            }
            for i in 0..<n {
                let key = src[i]
                a[i] = key & 0x8000_0000 != 0 ? key ^ 0x8000_0000 : ~key
            }
            return true
        }
    }
}
