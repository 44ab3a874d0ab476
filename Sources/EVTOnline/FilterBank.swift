import RealModule
import SaliencyCore
import CKernels

/// All `K` convolution filters of one model, each with a streaming POT (SPOT) estimator and a
/// z-score baseline, stored as struct-of-arrays so that one prediction row is one pass over memory.
///
/// ## Life cycle (docs/method.md §3)
/// 1. **Calibrating**: the first `configuration.calibration` valid rows are buffered
///    (`calibration × K` Float32, freed afterwards). On the last one every filter gets, from its
///    column exactly as a one-shot batch fit would: the threshold `t_j` (numpy's default "linear"
///    quantile at `level`), its peaks (the most recent `maxPeaks` kept in a ring), `N_t,j`, the
///    Grimshaw GPD fit, the extreme threshold `z_j`, the Welford moments `μ_j`, `σ_j`, and a
///    17-point quantile sketch of its body for ranking below-threshold values.
/// 2. **Monitoring**: for every value `s` of a row:
///    - `s > z_j`: an *extreme exceedance*; reported and counted. Its size is never learned: it
///      enters the peaks ring as a peak right-censored at `z_j − t_j` (`n_j` and `N_t,j` grow) and
///      stays out of the z-score moments. Dropping extremes outright (docs/method.md §3 as first
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
/// ## Kernels
/// The vector kernels are a value: `Kernels.best` (AVX2 where the CPU has it) or `.baseline`
/// (SSE2 on x86-64), given at `init` and held by the bank (`kernels`), so banks with different
/// variants can run side by side; every variant gives bit-identical results. (The Grimshaw fit's
/// inner sums, in `GrimshawFitter`, always run the best variant.)
///
/// ## Invariants
/// Checked by `checkInvariants()` (FilterBank+Invariants.swift), after every `update`, refit,
/// `setFrozen` and restore in builds with `-DSALIENCY_INVARIANTS` (free otherwise):
/// - **phase**: calibrating ⇔ the calibration buffer exists; then `calibSeen < calibration`,
///   `rows == calibSeen` and no filter is fitted (method 255); monitoring ⇒ `calibSeen ==
///   calibration`, `rows ≥ calibration`, every filter fitted;
/// - **ring**: `head < cap`, `ringCount ≤ cap`, `ringCount < cap ⇒ head == ringCount`; the
///   `ringCount` entries are finite; `ringCount ≤ N_t ≤ n`;
/// - **thresholds** (monitoring): `t_j` finite, `t_j ≤ z_j`, the Float columns are the exact
///   ones rounded toward −∞; `σ_j > 0`; too few peaks ⇒ `z_j = +∞`; the sketch is nondecreasing;
/// - **refit queue**: `0 ≤ queueHead < K`, `0 ≤ queueCount ≤ K`; the `queueCount` entries from
///   `queueHead` are distinct filters flagged `inQueue`, and no other filter is; `isDue ⇒
///   inQueue`; `isDue ⇒ sinceFit ≥ refitAfterPeaks`; not frozen and `sinceFit ≥ refitAfterPeaks`
///   ⇒ `isDue`; `0 ≤ refitCredit ≤ max(1, refitsPerRow)`;
/// - **moments**: `0 ≤ blockFill < 32`, `blockExtremes ≤ blockFill`, and every monitoring row is
///   absorbed or extreme: `wCount + blockFill − blockExtremes + extremes == rows`; `M2 ≥ 0`;
/// - **extremes**: `extremes ≤ rows − calibration`; `lastExtremes` ascending, in range;
/// - **drift** (DSPOT): `driftHead < d`, `driftSum` equals the window's sum up to rounding.
///
/// ## Invalid input
/// `update` validates first (width, NaN/±∞, negative values) and a rejected row changes nothing
/// but `rejected[reason]`. `updateValidated` skips the check for callers that already did it.
///
/// References: Siffer et al., "Anomaly Detection in Streams with Extreme Value Theory", KDD 2017
/// (SPOT); Wang & Sato 2023 (POT parameter saliency); Levin et al. 2022 (z-score saliency);
/// Chan, Golub & LeVeque 1979 (merging moments).
///
/// Files by aspect: this one (type, life cycle), `+Storage` (every column, one table), `+Update`
/// (the hot path), `+Calibration`, `+Refits`, `+Ranking` (scores, top-k), `+Introspection`
/// (reports, counts, sizes), `+Snapshot` (binary state), `+Invariants`.
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
        /// Lower-tail extremes (indices in `lastLowerExtremes`).
        public var lowerExtremes: Int = 0
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

    /// Which variant of the vector kernels (`Sources/CKernels`) a bank runs. Every variant gives
    /// bit-identical results; they differ only in speed.
    public enum Kernels: String, Sendable, Hashable, CaseIterable {
        /// The best instruction set this CPU supports (AVX2 where present, else SSE2 on x86-64).
        case best
        /// The architecture's baseline (SSE2 on x86-64): what a CPU without AVX2 runs.
        case baseline

        /// The C table of this variant (static storage).
        var table: saliency_kernels {
            saliency_kernels_table(self == .best ? Int32(SALIENCY_KERNELS_BEST) : Int32(SALIENCY_KERNELS_BASELINE))!.pointee
        }
        /// The instruction set this variant runs on this machine: "avx2", "sse2" or "generic".
        public var isa: String { String(cString: table.isa) }
    }

    public let filterCount: Int
    public let configuration: POTConfiguration
    /// The kernel variant this bank runs (given at `init`).
    public let kernels: Kernels
    /// Ring sampling stride m (a power of two): every m-th peak of a filter enters its ring.
    public let peakStride: Int

    /// Every per-filter column (FilterBank+Storage.swift).
    let storage: Storage
    /// Ring capacity per filter (`configuration.maxPeaks`).
    let cap: Int
    static let blockRows = 32
    static let sketchPoints = 17

    // The bank's kernels, unwrapped once (C function pointers from `kernels.table`).
    let scanRow: @convention(c) (UnsafePointer<saliency_scan_columns>?, UnsafePointer<Float>?, UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<Int64>?) -> Int64
    let mergeMomentsKernel: @convention(c) (UnsafePointer<saliency_merge_columns>?) -> Void
    let scanBothKernel: @convention(c) (UnsafePointer<saliency_scan_columns>?, UnsafePointer<saliency_lower_columns>?, UnsafePointer<Float>?, UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<Int64>?, UnsafeMutablePointer<Int64>?) -> Int64
    let scanLowerKernel: @convention(c) (UnsafePointer<saliency_lower_columns>?, UnsafePointer<Float>?, UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<Int64>?) -> Int64
    let rowHasInvalid: @convention(c) (UnsafeRawPointer?, Int64) -> Int32

    // MARK: scalar state (the columns are in `storage`)

    /// Valid rows absorbed (calibration included).
    public internal(set) var rows: UInt64 = 0
    /// Rejected rows by reason; they never touched any statistic.
    public internal(set) var rejected: [RowRejection: UInt64] = [:]
    /// Refits done so far (all paths).
    public internal(set) var refitCount: UInt64 = 0
    var queueHead = 0
    var queueCount = 0
    var blockFill = 0
    var refitCredit = 0.0
    var extremeCount = 0
    // The lower tail's scalars (tails = lower or both; docs/statistics.md, "Two tails").
    var lowerExtremeCount = 0
    var lowerQueueHead = 0
    var lowerQueueCount = 0
    /// Which queue the next budgeted refit serves when both hold due filters (alternates).
    var refitLowerNext = false
    var calibSeen = 0
    var fitter: GrimshawFitter
    /// The model-level cross-fit requested at calibration end and its result (ModelShiftCrossFit.swift).
    var crossFit = CrossFitSlot()

    public var phase: Phase { isCalibrated ? .monitoring : .calibrating(seen: calibSeen, of: configuration.calibration) }
    public var isCalibrated: Bool { storage.calibration == nil }

    /// - Throws: `SaliencyError(.invalidConfiguration)` when `configuration` is invalid or `filterCount < 1`.
    public init(filterCount: Int, configuration: POTConfiguration = .init(), kernels: Kernels = .best) throws(SaliencyError) {
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
        self.filterCount = filterCount
        self.configuration = configuration
        self.kernels = kernels
        self.cap = configuration.maxPeaks
        self.peakStride = configuration.effectiveStride(filterCount: filterCount)
        self.storage = Storage(filterCount: filterCount, configuration: configuration)
        let table = kernels.table
        self.scanRow = table.scan_row!
        self.mergeMomentsKernel = table.merge_moments!
        self.scanLowerKernel = table.scan_lower!
        self.scanBothKernel = table.scan_both!
        self.rowHasInvalid = table.row_has_invalid!
        self.fitter = GrimshawFitter(capacity: max(configuration.maxPeaks, configuration.calibration), kernels: kernels)
    }

    /// The instruction set of the best kernels on this machine: "avx2" or "sse2" on x86-64,
    /// "generic" elsewhere (`Kernels.best.isa`; a bank's own is `kernels.isa`).
    public static var kernelISA: String { String(cString: saliency_kernels_isa()) }

    // MARK: - Validation

    /// Why `row` cannot be absorbed, or nil. One vectorized pass, no allocation.
    /// `-0.0` is accepted (it is a zero magnitude); NaN, ±∞ and negative values are not.
    public func validate(_ row: UnsafeBufferPointer<Float>) -> RowRejection? {
        guard row.count == filterCount else { return .wrongWidth }
        guard let base = row.baseAddress else { return nil }
        // One branch-free vector pass (CKernels); only a bad row pays for saying which.
        guard rowHasInvalid(base, Int64(row.count)) != 0 else { return nil }
        for s in row where !s.isFinite { return .nonFinite }
        return .negative
    }
}
