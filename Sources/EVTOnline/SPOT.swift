import RealModule
import SaliencyCore

/// What `SPOT.step` made of one value (libspot: NORMAL / EXCESS / ANOMALY, plus calibration).
public enum SPOTOutcome: UInt8, Sendable {
    /// Still collecting the calibration values; nothing is judged.
    case calibrating
    /// At or below the threshold `t`: only `n` grows.
    case normal
    /// Above `t`, at or below `z_q`: a new peak, added to the model.
    case peak
    /// Above `z_q`: an extreme exceedance. Its value is never learned: with `.censor` (default)
    /// it counts as a peak censored at `z_q`; with `.discard` nothing changes (libspot).
    case extreme
}

/// What an extreme exceedance (a value above `z_q`) does to a SPOT model.
public enum ExtremePolicy: UInt8, Sendable {
    /// The default. The extreme enters the model as a right-censored peak at `z_q − t`: `n` and
    /// `N_t` count it, and the GPD fit learns only that the tail reached `z_q`, never the
    /// anomaly's magnitude (censored likelihood, `GrimshawFitter.fit(_:censored:minPeaks:)`).
    /// This keeps the fitted tail unbiased under the null.
    case censor
    /// Siffer et al. / libspot / docs/method.md §3 literally: the extreme is ignored. With refits the
    /// peak sample is then truncated at `z_q`, the fitted shape drifts negative, `z_q` falls and
    /// more values become extreme: on i.i.d. streams with q = 1e-3, level 0.98, refits every 32
    /// peaks, the measured extreme rate was 6–11·q (docs/statistics.md). Use for reproduction.
    case discard
}

/// One series' streaming peaks-over-threshold detector: SPOT, or DSPOT when
/// `driftWindow > 0` (Siffer, Fouque, Termier, Largouët, "Anomaly detection in streams with
/// extreme value theory", KDD 2017), following docs/method.md §3.
///
/// - Calibration: the first `calibration` values (DSPOT: the first `d` only seed the drift
///   window, the remaining `calibration − d` are calibration residuals). Then
///   `t = linearQuantile(level)` of the calibration sample, peaks = `{x − t : x > t}`,
///   `n` = calibration sample size, `N_t` = number of peaks, a Grimshaw fit and `z_q`.
/// - After calibration, for each value (DSPOT: residual `x − M`, `M` the mean of the last `d`
///   non-extreme values):
///   - `> z_q` → `.extreme`. Its value is never learned and it never enters DSPOT's window. By
///     default (`ExtremePolicy.censor`) it counts in `n` and `N_t` and enters the ring as a
///     peak right-censored at `z_q − t`; with `.discard` it changes nothing (libspot: `n` does
///     not count anomalies). See `ExtremePolicy` for why `.censor` is the default;
///   - `> t` → `.peak`: appended to the ring of `maxPeaks` (oldest forgotten), `n`, `N_t` grow;
///   - otherwise `.normal`: `n` grows.
/// - Refit: after `refitAfterPeaks` new peaks, synchronously, on the whole ring; `z_q` is
///   recomputed (with the current `n`, `N_t`) only at a refit. While the fit has
///   `.insufficientPeaks`, `extremeThreshold` is `nil` (nothing is extreme) and every new peak
///   triggers a refit.
/// - State is an enum (`.calibrating` / `.fitted`), never NaN markers.
/// - Complexity: `step` O(1) amortized (DSPOT's window sum is recomputed every `d` values to
///   stop rounding drift); a refit is O(maxPeaks · passes); calibration end O(n log n).
///   Memory O(calibration) while calibrating, then O(maxPeaks + d).
/// - NaN/∞: `step` requires a finite value (precondition; callers validate).
public struct SPOT: Sendable {
    /// Counters of the model (all zero while calibrating).
    public struct Counts: Sendable, Hashable {
        /// Values judged `.normal` after calibration.
        public var normal = 0
        /// `N_t`: peaks in the model, calibration peaks included; keeps counting past `maxPeaks`.
        public var peaks = 0
        /// Extreme exceedances (not in the model).
        public var extremes = 0
        /// `n`: observations in the model (calibration sample, then every non-extreme value).
        public var n = 0
    }

    public let configuration: POTConfiguration
    /// What an extreme exceedance does to the model.
    public let extremePolicy: ExtremePolicy
    public private(set) var counts = Counts()
    private var state: State
    private var drift: DriftWindow?

    private enum State: Sendable {
        case calibrating(ContiguousArray<Double>)
        case fitted(Model)
    }

    fileprivate struct Model: Sendable {
        var threshold: Double
        /// Ring of excesses over `threshold`; `count ≤ maxPeaks`; `head` is the oldest once full.
        var peaks: ContiguousArray<Double>
        /// Parallel to `peaks`: whether the entry is a censored extreme (`Y > value`).
        var censored: ContiguousArray<Bool> = []
        var head = 0
        var fit: GPDFit
        var extremeThreshold: Double?
        var newPeaks = 0
    }

    /// Validates `configuration` (and, for DSPOT, that `calibration − driftWindow` still
    /// yields enough peaks), then starts calibrating.
    public init(configuration: POTConfiguration, extremes: ExtremePolicy = .censor) throws(SaliencyError) {
        try configuration.validate()
        let d = configuration.driftWindow
        if d > 0 {
            let sample = configuration.calibration - d
            guard sample >= 10, Double(sample) * (1 - configuration.level) >= Double(configuration.minPeaks) else {
                throw SaliencyError(.invalidConfiguration,
                    "DSPOT calibrates on calibration − drift_window = \(sample) residuals, too few for min_peaks = \(configuration.minPeaks) at level \(configuration.level); raise calibration or lower drift_window")
            }
            drift = DriftWindow(capacity: d)
        }
        self.configuration = configuration
        self.extremePolicy = extremes
        var buffer = ContiguousArray<Double>()
        buffer.reserveCapacity(configuration.calibration - d)
        state = .calibrating(buffer)
    }

    public var isCalibrating: Bool {
        if case .calibrating = state { return true }
        return false
    }

    /// The initial threshold `t` (in residual units for DSPOT); `nil` while calibrating.
    public var threshold: Double? {
        if case .fitted(let m) = state { return m.threshold }
        return nil
    }

    /// `z_q` (in residual units for DSPOT); `nil` while calibrating or without a usable fit.
    public var extremeThreshold: Double? {
        if case .fitted(let m) = state { return m.extremeThreshold }
        return nil
    }

    /// The current GPD fit of the peaks; `nil` while calibrating.
    public var fit: GPDFit? {
        if case .fitted(let m) = state { return m.fit }
        return nil
    }

    /// DSPOT's `M`, the mean of the last `d` non-extreme values (what the next value's residual
    /// is taken against); `nil` for plain SPOT or before the window is full.
    public var driftMean: Double? {
        guard let drift, drift.isFull else { return nil }
        return drift.mean
    }

    /// Uncensored peaks currently held in the ring, in ring order (the order a refit uses).
    public var peaks: [Double] {
        guard case .fitted(let m) = state else { return [] }
        return zip(m.peaks, m.censored).compactMap { $1 ? nil : $0 }
    }

    /// Censored peaks (extremes, stored as `z_q − t` at their time) currently in the ring.
    public var censoredPeaks: [Double] {
        guard case .fitted(let m) = state else { return [] }
        return zip(m.peaks, m.censored).compactMap { $1 ? $0 : nil }
    }

    /// Feeds one value. Precondition: `x` finite.
    public mutating func step(_ x: Double) -> SPOTOutcome {
        precondition(x.isFinite, "SPOT.step needs a finite value, got \(x)")
        switch state {
        case .calibrating(var buffer):
            if var window = drift, !window.isFull {
                window.push(x)
                drift = window
                return .calibrating
            }
            state = .calibrating([]) // release the reference so `buffer` is uniquely owned
            let r = drift.map { x - $0.mean } ?? x
            drift?.push(x)
            buffer.append(r)
            if buffer.count < configuration.calibration - configuration.driftWindow {
                state = .calibrating(buffer)
            } else {
                state = .fitted(calibrate(buffer))
            }
            return .calibrating

        case .fitted(var model):
            let r = drift.map { x - $0.mean } ?? x
            if let z = model.extremeThreshold, r > z {
                counts.extremes += 1
                if extremePolicy == .censor {
                    // Censored at z_q: counts in n and N_t; the fit learns only that Y > z_q − t.
                    state = .calibrating([])
                    counts.n += 1
                    counts.peaks += 1
                    model.push(z - model.threshold, censored: true, capacity: configuration.maxPeaks)
                    model.newPeaks += 1
                    if model.newPeaks >= configuration.refitAfterPeaks { refit(&model) }
                    state = .fitted(model)
                }
                return .extreme
            }
            drift?.push(x)
            counts.n += 1
            guard r > model.threshold else {
                counts.normal += 1
                return .normal
            }
            state = .calibrating([]) // release the reference so `model` is uniquely owned
            counts.peaks += 1
            model.push(r - model.threshold, censored: false, capacity: configuration.maxPeaks)
            model.newPeaks += 1
            if model.fit.method == .insufficientPeaks || model.newPeaks >= configuration.refitAfterPeaks {
                refit(&model)
            }
            state = .fitted(model)
            return .peak
        }
    }

    /// Refits now (on demand), whatever the number of new peaks. No effect while calibrating.
    public mutating func refit() {
        guard case .fitted(var model) = state else { return }
        state = .calibrating([])
        refit(&model)
        state = .fitted(model)
    }

    // MARK: - Private

    private mutating func calibrate(_ sample: ContiguousArray<Double>) -> Model {
        var sorted = sample
        sorted.sort()
        let t = sorted.withUnsafeBufferPointer { POT.linearQuantile(sorted: $0, level: configuration.level) }
        var model = Model(threshold: t, peaks: [],
                          fit: GPDFit(gpd: GPD(shape: 0, scale: 1), logLikelihood: 0, method: .insufficientPeaks, peakCount: 0))
        model.peaks.reserveCapacity(configuration.maxPeaks)
        var nt = 0
        for v in sample where v > t {
            model.push(v - t, censored: false, capacity: configuration.maxPeaks)
            nt += 1
        }
        counts.n = sample.count
        counts.peaks = nt
        refit(&model)
        return model
    }

    private func refit(_ model: inout Model) {
        let total = model.peaks.count
        let m = model.censored.reduce(0) { $0 + ($1 ? 1 : 0) }
        let fit = withUnsafeTemporaryAllocation(of: Double.self, capacity: max(total, 1)) { split in
            // Uncensored peaks first, censored ones after.
            var i = 0, j = total - m
            for (v, c) in zip(model.peaks, model.censored) {
                if c { split[j] = v; j += 1 } else { split[i] = v; i += 1 }
            }
            let peaks = UnsafeBufferPointer(rebasing: split[0..<(total - m)])
            let censored = UnsafeBufferPointer(rebasing: split[(total - m)..<total])
            return withUnsafeTemporaryAllocation(of: Double.self,
                                                 capacity: GrimshawFitter.scratchCount(for: total - m, censored: m)) {
                GrimshawFitter.fit(peaks, censored: censored, minPeaks: configuration.minPeaks, scratch: $0)
            }
        }
        model.fit = fit
        model.newPeaks = 0
        if fit.method == .insufficientPeaks || counts.peaks == 0 {
            model.extremeThreshold = nil
        } else {
            model.extremeThreshold = POT.extremeThreshold(threshold: model.threshold, gpd: fit.gpd, q: configuration.q,
                                                          n: Double(counts.n), peaks: Double(counts.peaks))
        }
    }
}

extension SPOT.Model {
    /// Appends to the ring; once full, overwrites the oldest.
    mutating func push(_ y: Double, censored c: Bool, capacity: Int) {
        if peaks.count < capacity {
            peaks.append(y)
            censored.append(c)
        } else {
            peaks[head] = y
            censored[head] = c
            head += 1
            if head == capacity { head = 0 }
        }
    }
}

/// DSPOT's window of the last `d` non-extreme raw values, with an O(1) running mean that is
/// recomputed from scratch every `d` pushes so rounding errors cannot accumulate.
struct DriftWindow: Sendable {
    private var values: ContiguousArray<Double>
    private var next = 0
    private var sum = 0.0
    let capacity: Int

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
        values = []
        values.reserveCapacity(capacity)
    }

    var isFull: Bool { values.count == capacity }
    var mean: Double { values.isEmpty ? 0 : sum / Double(values.count) }

    mutating func push(_ x: Double) {
        if values.count < capacity {
            values.append(x)
            sum += x
            return
        }
        sum += x - values[next]
        values[next] = x
        next += 1
        if next == capacity {
            next = 0
            sum = 0
            for v in values { sum += v }
        }
    }
}
