import RealModule
import SaliencyCore
import CKernels

/// All `K` convolution filters of one model, each with a streaming POT (SPOT) estimator and a
/// z-score baseline, stored as struct-of-arrays so that one prediction row is one pass over memory.
///
/// ## Life cycle (method.md §3)
/// 1. **Calibrating**: the first `configuration.calibration` valid rows are buffered
///    (`calibration × K` Float32, freed afterwards). On the last one every filter gets, from its
///    column exactly as a one-shot batch fit would: the threshold `t_j` (numpy's default "linear"
///    quantile at `level`), its peaks (the most recent `maxPeaks` kept in a ring), `N_t,j`, the
///    Grimshaw GPD fit, the extreme threshold `z_j`, the Welford moments `μ_j`, `σ_j`, and a
///    17-point quantile sketch of its body for ranking below-threshold values.
/// 2. **Monitoring**: for every value `s` of a row:
///    - `s > z_j`: an *extreme exceedance*; reported and counted. Its size is never learned: it
///      enters the peaks ring as a peak right-censored at `z_j − t_j` (`n_j` and `N_t,j` grow) and
///      stays out of the z-score moments. Dropping extremes outright (method.md §3 as first
///      written) truncates the peak sample at `z`, pushes each refit's shape negative and lowers
///      `z`, so the exceedance rate runs away to 6–11·q (measured: docs/statistics.md); censoring
///      keeps it within [0.5, 2]·q while an extreme 10⁶ above `z` moves the model no more than one
///      just above it;
///    - `t_j < s ≤ z_j`: a peak; `N_t,j` and `n_j` grow and, if it is the m-th peak since the last
///      sample (`peakStride`, "Ring sampling" below), `s − t_j` enters the ring;
///    - otherwise `n_j` grows. Moments absorb every non-extreme value.
///
/// ## Drift (DSPOT, `drift_window = d > 0`, off by default)
/// Thresholds apply to the residual `s − M_j`, `M_j` the mean of filter j's last d absorbed
/// values (Siffer et al. 2017 §4.3): the first d calibration rows seed the windows, the other
/// `n_cal − d` calibrate; extremes never enter the window; the z-score stays on raw values. A
/// scalar pass (about K·d·4 bytes more state). The monitor exists to catch shift, so adapting to
/// it is the user's choice.
///
/// ## Refits: budgeted, FIFO, with a stated lag
/// A filter is *due* after `refitAfterPeaks` new peaks. Due filters wait in a FIFO queue (each at
/// most once); `update` spends `refitsPerRow` refits per row (credit accumulates fractionally,
/// capped at one row's worth), `refitDue(limit:)` lets the owner refit when idle, and
/// `refit(filter:)` refits on demand. A refit is a full Grimshaw fit on the filter's ring: its
/// result equals a from-scratch batch fit on the same peaks. **Lag bound**: with `r = refitsPerRow > 0`
/// a due filter is refit within `maxRefitLagRows = ⌈K / r⌉ + 1` rows of becoming due (it can have
/// at most `K − 1` filters ahead of it), so a fit misses at most
/// `refitAfterPeaks − 1 + maxRefitLagRows` of the filter's newest peaks. `r = 0` disables
/// in-line refits (the owner must call `refitDue`).
///
/// ## Ring sampling
/// Every peak counts in `N_t` and towards `refitAfterPeaks`; every `peakStride`-th (m, a power of
/// two; automatic by default: the ring then spans about one refit period at full load, see
/// `POTConfiguration.effectiveStride`) enters the ring, which therefore holds a systematic sample
/// of the newest `m · maxPeaks` peaks. m = 1 is the textbook ring of the newest peaks.
///
/// ## Cost
/// `update`: O(K) vector work (`saliency_scan_row`, AVX2 or SSE2 chosen at run time, bit-identical)
/// plus O(1) per *event* (extreme, ring sample, filter becoming due: about `peaks/m + extremes`
/// per row); no allocation.
/// Moments are accumulated in 32-row Float32 blocks relative to the last merged mean and merged
/// into Double Welford state with Chan's formula (O(K) every 32 rows), which keeps the hot state
/// at 20 bytes per filter. Scoring and ranking are on demand: O(K log k).
///
/// ## Invalid input
/// `update` validates first (width, NaN/±∞, negative values) and a rejected row changes nothing
/// but `rejected[reason]`. `updateValidated` skips the check for callers that already did it.
///
/// References: Siffer et al., "Anomaly Detection in Streams with Extreme Value Theory", KDD 2017
/// (SPOT); Wang & Sato 2023 (POT parameter saliency); Levin et al. 2022 (z-score saliency);
/// Chan, Golub & LeVeque 1979 (merging moments).
///
/// Not `Sendable`: one owner (the model's engine thread) mutates it.
public final class FilterBank {
    public enum Phase: Sendable, Hashable {
        case calibrating(seen: Int, of: Int)
        case monitoring
    }

    /// What one `update` did.
    public struct RowResult: Sendable, Hashable {
        public var rejected: RowRejection?
        public var calibrated: Bool   // this row completed calibration
        public var peaks: Int
        public var extremes: Int      // indices in `lastExtremes`
        public var refits: Int
        public static func rejected(_ r: RowRejection) -> RowResult { RowResult(rejected: r, calibrated: false, peaks: 0, extremes: 0, refits: 0) }
    }

    /// How a filter's tail is currently modelled.
    public enum TailModel: String, Sendable, Hashable, Codable {
        case calibrating, gpd, exponential, moments, empirical
    }

    /// Everything known about one filter (for queries, reports and tests).
    public struct FilterReport: Sendable, Hashable, Codable {
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
        public var mean: Double
        public var standardDeviation: Double
        /// DSPOT drift mean `M_j` (nil without drift).
        public var driftMean: Double? = nil
    }

    public let filterCount: Int
    public let configuration: POTConfiguration
    public var phase: Phase { calib == nil ? .monitoring : .calibrating(seen: calibSeen, of: configuration.calibration) }
    public var isCalibrated: Bool { calib == nil }
    /// Valid rows absorbed (calibration included).
    public internal(set) var rows: UInt64 = 0
    /// Rejected rows by reason; they never touched any statistic.
    public internal(set) var rejected: [RowRejection: UInt64] = [:]
    /// Filters whose values were extreme exceedances in the last `update` (valid until the next one).
    public var lastExtremes: UnsafeBufferPointer<Int32> { UnsafeBufferPointer(start: extremeOut, count: extremeCount) }
    /// Refits done so far (all paths).
    public internal(set) var refitCount: UInt64 = 0
    /// Filters currently due for a refit.
    public var dueCount: Int { (0..<filterCount).reduce(0) { $0 + (isDue[$1] ? 1 : 0) } }
    /// Upper bound on the rows between a filter becoming due and its refit (see type docs).
    public var maxRefitLagRows: Int? {
        configuration.refitsPerRow > 0 ? Int((Double(filterCount) / configuration.refitsPerRow).rounded(.up)) + 1 : nil
    }

    // MARK: state (struct of arrays; every column has `filterCount` entries unless noted)
    let cap: Int
    static let blockRows = 32
    static let sketchPoints = 17

    // hot: every row's vector pass (saliency_scan_row) reads these, and writes the last three
    let thr: UnsafeMutablePointer<Float>       // t_j rounded toward −∞ (so s > thr ⇔ s > t exactly)
    let ext: UnsafeMutablePointer<Float>       // z_j rounded toward −∞; +∞ when no tail model
    let shift: UnsafeMutablePointer<Float>     // Float(μ_j) at the last merge
    let bsum: UnsafeMutablePointer<Float>      // Σ (s − shift) over the current block (non-extreme only)
    let bsumsq: UnsafeMutablePointer<Float>    // Σ (s − shift)²
    let sinceFit: UnsafeMutablePointer<UInt32> // peaks since the last fit (also the ring-stride phase)
    // per event (ring sample, extreme, filter becoming due)
    let head: UnsafeMutablePointer<UInt32>     // ring write position
    let ringCount: UnsafeMutablePointer<UInt32>
    let ring: UnsafeMutablePointer<Float>      // K × cap excesses s − t (huge pages where available)
    let thrD: UnsafeMutablePointer<Double>     // exact t_j
    // per extreme
    let extremesTotal: UnsafeMutablePointer<UInt64>
    let blockExtremes: UnsafeMutablePointer<UInt16>
    // cold
    let ntAtFit: UnsafeMutablePointer<UInt64>
    let shape: UnsafeMutablePointer<Double>
    let scale: UnsafeMutablePointer<Double>
    let extD: UnsafeMutablePointer<Double>
    let method: UnsafeMutablePointer<UInt8>    // GPDFitMethod raw value; 255 = calibrating
    let wCount: UnsafeMutablePointer<Double>
    let wMean: UnsafeMutablePointer<Double>
    let wM2: UnsafeMutablePointer<Double>
    let sketch: UnsafeMutablePointer<Float>    // K × 17 quantiles of the calibration body
    let isDue: UnsafeMutablePointer<Bool>
    /// Filters whose tail model is held fixed (their alert is firing): peaks and extremes are
    /// counted and reported but do not enter the ring, so a persistent shift cannot teach the
    /// model that it is normal. n still grows for every row.
    let frozen: UnsafeMutablePointer<Bool>
    let inQueue: UnsafeMutablePointer<Bool>
    let queue: UnsafeMutablePointer<Int32>     // FIFO of due filters (capacity K)
    var queueHead = 0
    var queueCount = 0
    var blockFill = 0
    var refitCredit = 0.0
    /// Ring sampling stride m (a power of two): every m-th peak of a filter enters its ring.
    public let peakStride: Int
    // scratch
    let extremeOut: UnsafeMutablePointer<Int32>
    /// Event groups of the last scan (K/8 + 1 entries): first filter, and a bit per event lane.
    let eventBase: UnsafeMutablePointer<Int32>
    let eventMask: UnsafeMutablePointer<UInt8>
    // DSPOT (drift_window d > 0): per filter the last d absorbed values, their write position and
    // running sum (recomputed exactly each time the position wraps, so rounding cannot drift).
    let driftRing: UnsafeMutablePointer<Float>?
    let driftHead: UnsafeMutablePointer<UInt32>?
    let driftSum: UnsafeMutablePointer<Double>?
    var extremeCount = 0
    var calib: UnsafeMutablePointer<Float>?
    var calibSeen = 0
    var fitter: GrimshawFitter
    let scores: UnsafeMutablePointer<Double>
    let fitScratch: UnsafeMutablePointer<Float>
    let censorScratch: UnsafeMutablePointer<Float>

    /// The ring (K × maxPeaks floats, 26 MiB for ResNet-50), zero-filled, on transparent huge pages
    /// where the kernel allows: events write it at random, and 4 KiB pages made that a TLB miss too.
    static func hugeColumn(_ count: Int) -> UnsafeMutablePointer<Float> {
        guard let raw = saliency_alloc_huge(count * MemoryLayout<Float>.size) else {
            fatalError("out of memory allocating \(count * MemoryLayout<Float>.size) bytes of peak rings")
        }
        return raw.bindMemory(to: Float.self, capacity: count)
    }

    /// - Throws: `SaliencyError(.invalidConfiguration)` when `configuration` is invalid or `filterCount < 1`.
    public init(filterCount: Int, configuration: POTConfiguration = .init()) throws(SaliencyError) {
        try configuration.validate()
        guard filterCount >= 1, filterCount <= 1 << 24 else {
            throw SaliencyError(.invalidConfiguration, "filterCount must be in 1...\(1 << 24), got \(filterCount)")
        }
        let d = configuration.driftWindow
        if d > 0 {
            let residuals = configuration.calibration - d
            guard Double(residuals) * (1 - configuration.level) + 1e-9 >= Double(configuration.minPeaks) else {
                throw SaliencyError(.invalidConfiguration, "DSPOT calibrates on calibration − drift_window = \(residuals) residuals, too few for min_peaks = \(configuration.minPeaks) at level \(configuration.level); raise calibration or lower drift_window")
            }
        }
        let k = filterCount
        self.filterCount = k
        self.configuration = configuration
        self.cap = configuration.maxPeaks
        self.peakStride = configuration.effectiveStride(filterCount: k)
        func col<T>(_ v: T, _ n: Int = k) -> UnsafeMutablePointer<T> {
            let p = UnsafeMutablePointer<T>.allocate(capacity: n)
            p.initialize(repeating: v, count: n)
            return p
        }
        thr = col(Float.infinity); ext = col(Float.infinity); shift = col(0); bsum = col(0); bsumsq = col(0)
        head = col(0); ringCount = col(0); sinceFit = col(0); ring = Self.hugeColumn(k * configuration.maxPeaks); thrD = col(.infinity)
        extremesTotal = col(0); blockExtremes = col(0)
        ntAtFit = col(0); shape = col(0); scale = col(1); extD = col(.infinity); method = col(255)
        wCount = col(0); wMean = col(0); wM2 = col(0); sketch = col(0, k * Self.sketchPoints)
        isDue = col(false); frozen = col(false); inQueue = col(false); queue = col(0); extremeOut = col(0); eventBase = col(0, k / 8 + 1); eventMask = col(0, k / 8 + 1); scores = col(0); fitScratch = col(0, configuration.maxPeaks); censorScratch = col(0, configuration.maxPeaks)
        // Not initialized: rows are written before they are read, so the buffer's pages are claimed
        // as calibration rows arrive (memory follows what is learned, not what a schema announces).
        calib = .allocate(capacity: k * configuration.calibration)
        driftRing = d > 0 ? col(0, k * d) : nil
        driftHead = d > 0 ? col(0, k) : nil
        driftSum = d > 0 ? col(0, k) : nil
        fitter = GrimshawFitter(capacity: max(configuration.maxPeaks, configuration.calibration))
    }

    deinit {
        for p in [thr, ext, shift, bsum, bsumsq, sketch, fitScratch, censorScratch] as [UnsafeMutablePointer<Float>] { p.deallocate() }
        saliency_free_huge(ring, filterCount * cap * MemoryLayout<Float>.size)
        for p in [thrD, shape, scale, extD, wCount, wMean, wM2, scores] as [UnsafeMutablePointer<Double>] { p.deallocate() }
        for p in [head, ringCount, sinceFit] as [UnsafeMutablePointer<UInt32>] { p.deallocate() }
        extremesTotal.deallocate(); ntAtFit.deallocate(); blockExtremes.deallocate(); method.deallocate()
        isDue.deallocate(); frozen.deallocate(); inQueue.deallocate(); queue.deallocate(); extremeOut.deallocate(); eventBase.deallocate(); eventMask.deallocate()
        calib?.deallocate()
        driftRing?.deallocate(); driftHead?.deallocate(); driftSum?.deallocate()
    }

    // MARK: - Validation

    /// Why `row` cannot be absorbed, or nil. One vectorized pass, no allocation.
    /// `-0.0` is accepted (it is a zero magnitude); NaN, ±∞ and negative values are not.
    public func validate(_ row: UnsafeBufferPointer<Float>) -> RowRejection? {
        guard row.count == filterCount else { return .wrongWidth }
        return Self.checkValues(row)
    }

    static func checkValues(_ row: UnsafeBufferPointer<Float>) -> RowRejection? {
        guard let base = row.baseAddress else { return nil }
        // One branch-free vector pass (CKernels); only a bad row pays for saying which.
        guard saliency_row_has_invalid(base, Int64(row.count)) != 0 else { return nil }
        for s in row where !s.isFinite { return .nonFinite }
        return .negative
    }

    // MARK: - Update

    /// Absorbs one prediction row (K saliency values), or rejects it unchanged.
    @discardableResult
    public func update(_ row: UnsafeBufferPointer<Float>) -> RowResult {
        if let reason = validate(row) {
            rejected[reason, default: 0] += 1
            extremeCount = 0
            return .rejected(reason)
        }
        return updateValidated(row)
    }

    /// `update` for rows already validated (width K, finite, ≥ 0). Precondition checked in debug builds.
    @discardableResult
    public func updateValidated(_ row: UnsafeBufferPointer<Float>) -> RowResult {
        assert(validate(row) == nil, "updateValidated called with an invalid row")
        extremeCount = 0
        rows &+= 1
        if let c = calib {
            (c + calibSeen * filterCount).update(from: row.baseAddress!, count: filterCount)
            calibSeen += 1
            if calibSeen == configuration.calibration {
                finishCalibration()
                return RowResult(rejected: nil, calibrated: true, peaks: 0, extremes: 0, refits: filterCount)
            }
            return RowResult(rejected: nil, calibrated: false, peaks: 0, extremes: 0, refits: 0)
        }
        let peaks = driftRing == nil ? scan(row.baseAddress!) : scanDrift(row.baseAddress!)
        blockFill += 1
        if blockFill == Self.blockRows { mergeMoments() }
        var refits = 0
        if configuration.refitsPerRow > 0 {
            refitCredit = min(refitCredit + configuration.refitsPerRow, max(1, configuration.refitsPerRow))
            while refitCredit >= 1, queueCount > 0 {
                if refitNextDue() {
                    refitCredit -= 1
                    refits += 1
                }
            }
        }
        return RowResult(rejected: nil, calibrated: false, peaks: peaks, extremes: extremeCount, refits: refits)
    }

    /// The vector pass (`saliency_scan_row`, Sources/CKernels: AVX2 or SSE2, chosen at run time,
    /// bit-identical results): per filter it updates the moment block, counts a peak (`s > t`) in
    /// `sinceFit`, and flags an *event* when the value is an extreme (`s > z`), or a peak that is
    /// the m-th since the last sample (it enters the ring) or the `refitAfterPeaks`-th since the
    /// last fit (the filter becomes due). Only events reach Swift code per filter: about
    /// `peaks/m + extremes` per row, their ring lines prefetched first so the misses overlap.
    /// Returns the number of peaks (extremes excluded).
    @inline(__always)
    private func scan(_ row: UnsafePointer<Float>) -> Int {
        var columns = saliency_scan_columns(
            thr: thr, ext: ext, shift: shift, bsum: bsum, bsumsq: bsumsq, since: sinceFit,
            strideMask: UInt32(truncatingIfNeeded: peakStride - 1),
            dueAt: UInt32(truncatingIfNeeded: configuration.refitAfterPeaks), count: Int64(filterCount))
        var peaks: Int64 = 0
        let groups = Int(saliency_scan_row(&columns, row, eventBase, eventMask, &peaks))
        // Events touch cold per-filter columns at random: request them all first (independent
        // misses overlap), then the ring lines (their address needs `head`), then do the work.
        forEachEvent(groups) { j in
            saliency_prefetch_read(head + j)
            saliency_prefetch_read(thrD + j)
            saliency_prefetch_read(ringCount + j)
            saliency_prefetch_read(frozen + j)
        }
        forEachEvent(groups) { j in saliency_prefetch_write(ring + (j &* cap &+ Int(head[j]))) }
        forEachEvent(groups) { j in handleEvent(j, row[j]) }
        return Int(peaks) &- extremeCount
    }

    /// Calls `body` with the filter of every event lane of the last scan's `groups` groups, ascending.
    @inline(__always)
    private func forEachEvent(_ groups: Int, _ body: (Int) -> Void) {
        for g in 0..<groups {
            let base = Int(eventBase[g])
            var m = eventMask[g]
            while m != 0 {
                body(base &+ m.trailingZeroBitCount)
                m &= m &- 1
            }
        }
    }

    /// An event of the vector pass for filter j, whose peak is already counted in `sinceFit`.
    @inline(__always)
    private func handleEvent(_ j: Int, _ s: Float) {
        let extreme = s > ext[j]
        if extreme { recordExtreme(j) }
        let since = sinceFit[j]
        if since == 0 { ntAtFit[j] &+= 1 << 32 }   // UInt32 wrap (2³² peaks without a fit)
        // An alerting (frozen) filter learns nothing until it resolves; N_t still counts.
        guard !frozen[j] else { return }
        if since & UInt32(truncatingIfNeeded: peakStride - 1) == 0 {
            // An extreme enters right-censored at z − t: the tail learns that *something*
            // exceeded z, never how far. Stored negated (sign bit = censored): no flag needed.
            storePeak(j, extreme ? -Float(extD[j] - thrD[j]) : Float(Double(s) - thrD[j]))
        }
        if since == UInt32(truncatingIfNeeded: configuration.refitAfterPeaks) { markDue(j) }
    }

    @inline(__always)
    private func recordExtreme(_ j: Int) {
        extremesTotal[j] &+= 1
        blockExtremes[j] &+= 1
        extremeOut[extremeCount] = Int32(truncatingIfNeeded: j)
        extremeCount &+= 1
    }

    /// DSPOT's pass (Siffer et al. 2017 §4.3): each value is compared as the residual
    /// `r = s − M_j`, `M_j` the mean of filter j's last d absorbed values, in double precision
    /// against `t_j` and `z_j`; absorbed (non-extreme) values enter the drift window; the z-score
    /// moments stay on the raw values. Scalar, O(K); used only when `drift_window > 0`.
    private func scanDrift(_ row: UnsafePointer<Float>) -> Int {
        let k = filterCount, d = configuration.driftWindow
        let dd = Double(d)
        guard let ringD = driftRing, let headD = driftHead, let sumD = driftSum else { return 0 }
        var peaks = 0
        for j in 0..<k {
            let s = row[j]
            let r = Double(s) - sumD[j] / dd
            let extreme = r > extD[j]
            if !extreme {
                let dv = s - shift[j]
                bsum[j] += dv
                bsumsq[j] += dv * dv
                Self.pushDrift(ringD + j * d, &headD[j], &sumD[j], s, d)
            }
            if r > thrD[j] {
                sinceFit[j] &+= 1
                if !extreme { peaks &+= 1 }
                let since = sinceFit[j]
                if extreme || since & UInt32(truncatingIfNeeded: peakStride - 1) == 0 || since == UInt32(truncatingIfNeeded: configuration.refitAfterPeaks) {
                    if extreme { recordExtreme(j) }
                    if since == 0 { ntAtFit[j] &+= 1 << 32 }
                    if !frozen[j] {
                        if since & UInt32(truncatingIfNeeded: peakStride - 1) == 0 { storePeak(j, extreme ? -Float(extD[j] - thrD[j]) : Float(r - thrD[j])) }
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
        guard let sumD = driftSum else { return nil }
        return sumD[j] / Double(configuration.driftWindow)
    }

    /// The value compared with the thresholds: `s`, or the DSPOT residual `s − M_j`.
    @inline(__always) func comparable(_ j: Int, _ s: Float) -> Double {
        guard let sumD = driftSum else { return Double(s) }
        return Double(s) - sumD[j] / Double(configuration.driftWindow)
    }

    /// Appends `excess` to filter j's ring (the oldest entry is forgotten when full).
    @inline(__always)
    private func storePeak(_ j: Int, _ excess: Float) {
        let h = Int(head[j])
        ring[j &* cap &+ h] = excess
        head[j] = h &+ 1 == cap ? 0 : UInt32(h &+ 1)
        if Int(ringCount[j]) < cap { ringCount[j] &+= 1 }
    }

    @inline(__always)
    private func markDue(_ j: Int) {
        isDue[j] = true
        guard !inQueue[j] else { return }
        inQueue[j] = true
        var tail = queueHead + queueCount
        if tail >= filterCount { tail -= filterCount }
        queue[tail] = Int32(j)
        queueCount += 1
    }

    /// Merges the current moment block into the Welford state (Chan et al.) and re-centres the
    /// block on the new mean (`saliency_merge_moments`, vectorized; the formula is the one of
    /// `moments(_:)`). O(K).
    private func mergeMoments() {
        var columns = saliency_merge_columns(shift: shift, bsum: bsum, bsumsq: bsumsq, blockExtremes: blockExtremes,
                                             count_: wCount, mean: wMean, m2: wM2, count: Int64(filterCount),
                                             rowsInBlock: Double(blockFill))
        saliency_merge_moments(&columns)
        blockFill = 0
    }

    // MARK: - Calibration

    private func finishCalibration() {
        guard let c = calib else { return }
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
            if let ringD = driftRing, let headD = driftHead, let sumD = driftSum {
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
        c.deallocate()
        calib = nil
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
    private func calibrateFilter(_ j: Int, column: UnsafeBufferPointer<Float>, residuals: UnsafeBufferPointer<Float>, sorted: UnsafeMutablePointer<Float>) {
        let n = column.count
        // Moments: two-pass (exact batch reference for the streaming merge).
        var sum = 0.0
        for v in column { sum += Double(v) }
        let mean = sum / Double(n)
        var m2 = 0.0
        for v in column { let d = Double(v) - mean; m2 += d * d }
        wCount[j] = Double(n); wMean[j] = mean; wM2[j] = m2; shift[j] = Float(mean)
        // Threshold and sketch.
        let nr = residuals.count
        sorted.update(from: residuals.baseAddress!, count: nr)
        var sortedBuffer = UnsafeMutableBufferPointer(start: sorted, count: nr)
        sortedBuffer.sort()
        let t = Self.quantile(sorted: sorted, count: nr, configuration.level)
        thrD[j] = t
        thr[j] = Self.floatDown(t)
        for i in 0..<Self.sketchPoints {
            let p = configuration.level * Double(i) / Double(Self.sketchPoints - 1)
            sketch[j * Self.sketchPoints + i] = Float(Self.quantile(sorted: sorted, count: nr, p))
        }
        // Peaks in arrival order; the ring keeps the newest `cap`.
        var nt: UInt64 = 0
        let base = ring + j * cap
        var h = 0, count = 0
        for v in residuals where Double(v) > t {
            base[h] = Float(Double(v) - t)
            h += 1; if h == cap { h = 0 }
            count = min(count + 1, cap)
            nt += 1
        }
        head[j] = UInt32(h); ringCount[j] = UInt32(count); ntAtFit[j] = nt; sinceFit[j] = 0
        fitFilter(j)
    }

    // MARK: - Refits

    /// Refits up to `limit` due filters (FIFO). Returns how many were refit. For idle time.
    @discardableResult
    public func refitDue(limit: Int = .max) -> Int {
        var done = 0
        while done < limit, queueCount > 0 { if refitNextDue() { done += 1 } }
        return done
    }

    /// Refits one filter now (on demand), whether due or not.
    public func refit(filter j: Int) {
        precondition(j >= 0 && j < filterCount)
        guard calib == nil else { return }
        fitFilter(j)
    }

    /// Pops the oldest queued filter and refits it if still due (an on-demand refit may have
    /// served it already). Returns whether a fit ran.
    private func refitNextDue() -> Bool {
        let j = Int(queue[queueHead])
        queueHead += 1; if queueHead == filterCount { queueHead = 0 }
        queueCount -= 1
        inQueue[j] = false
        guard isDue[j] else { return false }
        fitFilter(j)
        return true
    }

    /// Full Grimshaw fit on filter j's ring; recomputes z_j. Clears its due flag.
    private func fitFilter(_ j: Int) {
        let count = Int(ringCount[j])
        // Oldest first, split into observed and censored excesses, so a refit is bit-identical to a
        // batch fit on the same peaks in arrival order.
        let base = ring + j * cap
        let start = count == cap ? Int(head[j]) : 0
        var nObs = 0, nCens = 0
        for i in 0..<count {
            var idx = start + i
            if idx >= cap { idx -= cap }
            let v = base[idx]
            if v.sign == .minus { censorScratch[nCens] = -v; nCens += 1 } else { fitScratch[nObs] = v; nObs += 1 }
        }
        let fit = fitter.fit(UnsafeBufferPointer(start: fitScratch, count: nObs),
                             censored: UnsafeBufferPointer(start: censorScratch, count: nCens), minPeaks: configuration.minPeaks)
        refitCount &+= 1
        ntAtFit[j] &+= UInt64(sinceFit[j])
        sinceFit[j] = 0
        isDue[j] = false   // a queue entry left behind is skipped when popped
        shape[j] = fit.gpd.shape
        scale[j] = fit.gpd.scale
        method[j] = fit.method.rawValue
        if fit.method == .insufficientPeaks {
            extD[j] = .infinity
            ext[j] = .infinity
        } else {
            let n = Double(nPOT(j)), nt = Double(ntAtFit[j])
            var z = POT.extremeThreshold(threshold: thrD[j], gpd: fit.gpd, q: configuration.q, n: n, peaks: nt)
            if !(z >= thrD[j]) { z = thrD[j] }   // q ≥ N_t/n: every peak is extreme (also catches NaN)
            extD[j] = z
            ext[j] = Self.floatDown(z)
        }
    }

    /// `n_j`: valid rows (extremes count: they enter the tail as censored peaks).
    @inline(__always) func nPOT(_ j: Int) -> UInt64 { rows - UInt64(driftRing == nil ? 0 : configuration.driftWindow) }
    @inline(__always) func nt(_ j: Int) -> UInt64 { ntAtFit[j] + UInt64(sinceFit[j]) }

    // MARK: - Scores and ranking

    /// Tail probability `p` and score `−log10 p` of value `s` for filter `j` (method.md §2).
    ///
    /// - Above a fitted threshold: `p = (N_t/n)·S_GPD(s − t)`. For a light tail (`γ < 0`) the fitted
    ///   endpoint `t + σ/|γ|` is a finite-sample estimate, often too low; `p` is therefore floored at
    ///   `(N_t/n)/(N_t + 1)`, the empirical probability of exceeding every peak seen, so a value
    ///   beyond the endpoint ranks high but cannot outrank a genuinely rare value of a heavy-tailed
    ///   filter for that reason alone (ties broken by the standardized excess).
    /// - Above the threshold without a fit (too few peaks): empirical tail of the ring,
    ///   `p = (N_t/n)·(#{peaks > y} + 1)/(peaks + 1)`.
    /// - At or below the threshold: `p = max(1 − F̂(s), N_t/n)` from the calibration sketch, so every
    ///   filter above its threshold outranks every filter below its own.
    /// Valid only once calibrated. `s` must be finite and ≥ 0.
    public func tailProbability(filter j: Int, value s: Float) -> Double {
        precondition(calib == nil, "tailProbability before calibration")
        let n = Double(nPOT(j)), ntj = Double(nt(j))
        let rate = ntj / n
        let sd = comparable(j, s)   // s, or the DSPOT residual s − M_j
        if sd > thrD[j] {
            let y = sd - thrD[j]
            if method[j] == GPDFitMethod.insufficientPeaks.rawValue {
                let base = ring + j * cap
                let c = Int(ringCount[j])
                var above = 0
                for i in 0..<c where Double(base[i]) > y { above += 1 }
                return rate * Double(above + 1) / Double(c + 1)
            }
            let g = GPD(shape: shape[j], scale: scale[j])
            var p = rate * g.survival(excess: y)
            if g.shape < 0 { p = max(p, rate / (ntj + 1)) }
            return p
        }
        // Below: interpolate the sketch (quantiles at level·i/16).
        let sk = sketch + j * Self.sketchPoints
        let m = Self.sketchPoints
        var cdf: Double
        if sd <= Double(sk[0]) {
            cdf = 0
        } else if sd >= Double(sk[m - 1]) {
            cdf = configuration.level
        } else {
            var lo = 0, hi = m - 1
            while hi - lo > 1 { let mid = (lo + hi) / 2; if Double(sk[mid]) <= sd { lo = mid } else { hi = mid } }
            let a = Double(sk[lo]), b = Double(sk[hi])
            let f = b > a ? (sd - a) / (b - a) : 1
            cdf = configuration.level * (Double(lo) + f) / Double(m - 1)
        }
        return max(1 - cdf, rate)
    }

    /// z-score `(s − μ_j)/σ_j` (σ = 1 when below 1e-14), moments as of the last merge plus the open block.
    public func zScore(filter j: Int, value s: Float) -> Double {
        let (mean, sd) = moments(j)
        return (Double(s) - mean) / (sd < 1e-14 ? 1 : sd)
    }

    /// Current mean and unbiased standard deviation of filter j, including the open block.
    public func moments(_ j: Int) -> (mean: Double, standardDeviation: Double) {
        var count = wCount[j], mean = wMean[j], m2 = wM2[j]
        let nb = Double(blockFill) - Double(blockExtremes[j])
        if nb > 0 {
            let s1 = Double(bsum[j]), s2 = Double(bsumsq[j])
            let meanB = Double(shift[j]) + s1 / nb
            let m2B = max(0, s2 - s1 * s1 / nb)
            let total = count + nb
            let delta = meanB - mean
            mean += delta * nb / total
            m2 += m2B + delta * delta * count * nb / total
            count = total
        }
        return (mean, count > 1 ? (m2 / (count - 1)).squareRoot() : 0)
    }

    /// Scores every filter of `row` by `kind` into `out` (count K): `−log10 p` or the z-score.
    public func score(_ row: UnsafeBufferPointer<Float>, by kind: ScoreKind, into out: UnsafeMutableBufferPointer<Double>) {
        precondition(row.count == filterCount && out.count == filterCount)
        switch kind {
        case .pot:
            for j in 0..<filterCount { out[j] = POT.score(p: tailProbability(filter: j, value: row[j])) }
        case .zscore:
            for j in 0..<filterCount { out[j] = zScore(filter: j, value: row[j]) }
        }
    }

    /// The `k` highest-scoring filters of `row`, best first; every filter can rank (method.md §2).
    /// For POT, filters above their threshold always precede those below; ties (e.g. floored light
    /// tails) are broken by the standardized excess `(s − t)/σ`, then by index.
    public func top(_ row: UnsafeBufferPointer<Float>, k: Int, by kind: ScoreKind) -> [RankedFilter] {
        precondition(calib == nil, "top before calibration")
        let out = UnsafeMutableBufferPointer(start: scores, count: filterCount)
        score(row, by: kind, into: out)
        return select(k: k, by: kind) { j in kind == .pot ? self.tieBreak(j, row[j]) : 0 }
    }

    /// Ranks by the mean score over several rows (a recent window). Geometric mean of `p` for POT.
    public func top(rows: [UnsafeBufferPointer<Float>], k: Int, by kind: ScoreKind) -> [RankedFilter] {
        precondition(calib == nil, "top before calibration")
        guard !rows.isEmpty else { return [] }
        let acc = UnsafeMutableBufferPointer<Double>.allocate(capacity: filterCount)
        defer { acc.deallocate() }
        acc.initialize(repeating: 0)
        let out = UnsafeMutableBufferPointer(start: scores, count: filterCount)
        for r in rows {
            score(r, by: kind, into: out)
            for j in 0..<filterCount { acc[j] += out[j] }
        }
        let inv = 1 / Double(rows.count)
        for j in 0..<filterCount { out[j] = acc[j] * inv }
        return select(k: k, by: kind) { _ in 0 }
    }

    private func tieBreak(_ j: Int, _ s: Float) -> Double {
        let v = comparable(j, s)
        return v > thrD[j] ? (v - thrD[j]) / scale[j] : 0
    }

    private func select(k: Int, by kind: ScoreKind, tie: (Int) -> Double) -> [RankedFilter] {
        let kk = min(max(k, 0), filterCount)
        guard kk > 0 else { return [] }
        // Key: (score, tie, −index). Infinite scores sort first; NaN never occurs (inputs validated).
        func better(_ a: (Double, Double, Int), _ b: (Double, Double, Int)) -> Bool {
            if a.0 != b.0 { return a.0 > b.0 }
            if a.1 != b.1 { return a.1 > b.1 }
            return a.2 < b.2
        }
        // Min-heap of the best kk (worst at the root).
        var heap: [(Double, Double, Int)] = []
        heap.reserveCapacity(kk)
        func siftDown(_ i0: Int) {
            var i = i0
            while true {
                let l = 2 * i + 1, r = l + 1
                var w = i
                if l < heap.count, better(heap[w], heap[l]) { w = l }
                if r < heap.count, better(heap[w], heap[r]) { w = r }
                if w == i { return }
                heap.swapAt(i, w); i = w
            }
        }
        func siftUp(_ i0: Int) {
            var i = i0
            while i > 0 {
                let p = (i - 1) / 2
                if better(heap[p], heap[i]) { heap.swapAt(p, i); i = p } else { return }
            }
        }
        for j in 0..<filterCount {
            let key = (scores[j], tie(j), j)
            if heap.count < kk {
                heap.append(key); siftUp(heap.count - 1)
            } else if better(key, heap[0]) {
                heap[0] = key; siftDown(0)
            }
        }
        heap.sort { better($0, $1) }
        return heap.map { key in
            let p: Double? = kind == .pot ? Double.pow(10, -key.0) : nil
            return RankedFilter(filter: key.2, score: key.0, p: p)
        }
    }

    // MARK: - Freezing

    /// Holds filter `j`'s tail model fixed (`true`) or lets it learn again (`false`). The daemon
    /// freezes a filter while its alert fires. O(1).
    public func setFrozen(_ j: Int, _ on: Bool) {
        precondition(j >= 0 && j < filterCount)
        frozen[j] = on
        // Peaks kept counting while frozen; one that passed the refit mark then is due now.
        if !on, calib == nil, sinceFit[j] >= UInt32(truncatingIfNeeded: configuration.refitAfterPeaks) { markDue(j) }
    }

    public func isFrozen(_ j: Int) -> Bool { frozen[j] }

    // MARK: - Introspection

    public func report(filter j: Int) -> FilterReport {
        precondition(j >= 0 && j < filterCount)
        let (mean, sd) = calib == nil ? moments(j) : (.nan, .nan)
        let tail: TailModel
        switch method[j] {
        case 255: tail = .calibrating
        case GPDFitMethod.insufficientPeaks.rawValue: tail = .empirical
        case GPDFitMethod.exponential.rawValue: tail = .exponential
        case GPDFitMethod.moments.rawValue: tail = .moments
        default: tail = .gpd
        }
        return FilterReport(filter: j, threshold: thrD[j], extremeThreshold: extD[j], shape: shape[j], scale: scale[j],
                            tail: tail, n: calib == nil ? nPOT(j) : UInt64(calibSeen), peaks: nt(j), peaksInRing: Int(ringCount[j]),
                            peaksSinceFit: Int(sinceFit[j]), extremes: extremesTotal[j], due: isDue[j], mean: mean, standardDeviation: sd,
                            driftMean: calib == nil ? driftMean(j) : nil)
    }

    // MARK: - Kernels

    /// The instruction set of the vector kernels in use: "avx2" or "sse2" on x86-64, "generic" elsewhere.
    public static var kernelISA: String { String(cString: saliency_kernels_isa()) }

    /// Pins the kernels to the baseline instruction set (`true`) or the best one available
    /// (`false`, the default). Process-wide; results are bit-identical either way. For tests and
    /// benchmarks (`saliencyctl bench --kernels baseline`).
    public static func useBaselineKernels(_ on: Bool) { _ = saliency_kernels_force(on ? 1 : 0) }

    /// Bytes of learned state per filter at this configuration (excluding the transient calibration buffer).
    public var bytesPerFilter: Int { Self.bytesPerFilter(configuration) }

    /// Bytes of learned state per filter at `configuration` (excluding the calibration buffer).
    public static func bytesPerFilter(_ configuration: POTConfiguration) -> Int {
        let hot = 5 * MemoryLayout<Float>.size
        let peak = 3 * MemoryLayout<UInt32>.size + configuration.maxPeaks * MemoryLayout<Float>.size + MemoryLayout<Double>.size
        let rare = MemoryLayout<UInt64>.size + MemoryLayout<UInt16>.size
        let driftBytes = configuration.driftWindow > 0 ? configuration.driftWindow * 4 + 4 + 8 : 0
        let cold = driftBytes + 7 * MemoryLayout<Double>.size + 1 + sketchPoints * MemoryLayout<Float>.size + 3 + MemoryLayout<Int32>.size  // + due/queued/frozen flags
        let scratch = MemoryLayout<Int32>.size + MemoryLayout<Double>.size + 1   // extremes, scores, event groups (5 B per 8 filters)
        return hot + peak + rare + cold + scratch
    }

    /// The most memory a bank of `filterCount` filters at `configuration` can claim: every column,
    /// the peak rings, the calibration buffer (`calibration × K` floats, freed once calibrated),
    /// the fitter's scratch. Nil when that does not fit in an `Int` (a hostile size). Admission
    /// control budgets models with it before anything is allocated; the pages themselves are
    /// claimed as rows arrive. `configuration` must be valid.
    public static func maximumBytes(filterCount: Int, configuration: POTConfiguration) -> Int? {
        guard filterCount >= 0 else { return nil }
        let perFilter = bytesPerFilter(configuration)
        let (calibBytes, o1) = configuration.calibration.multipliedReportingOverflow(by: MemoryLayout<Float>.size)
        let (perFilterAll, o2) = perFilter.addingReportingOverflow(calibBytes)
        let (columns, o3) = filterCount.multipliedReportingOverflow(by: perFilterAll)
        let fitter = GrimshawCore.scratchBound(max(configuration.maxPeaks, configuration.calibration)) * MemoryLayout<Double>.size
        let fixed = fitter + 2 * configuration.maxPeaks * MemoryLayout<Float>.size + 4096
        let (total, o4) = columns.addingReportingOverflow(fixed)
        return o1 || o2 || o3 || o4 ? nil : total
    }
}
