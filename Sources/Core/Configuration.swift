/// Which tails of each filter's saliency the FilterBank watches (docs/statistics.md, "Two tails").
/// `upper`: exploding saliency (the original detector); `lower`: a filter that goes quiet or dead;
/// `both`: each tail gets half of the risk `q`, so the false-alarm budget is shared.
public enum TailSelection: String, Sendable, Hashable, Codable, CaseIterable {
    case upper, lower, both
    public var hasUpper: Bool { self != .lower }
    public var hasLower: Bool { self != .upper }
}

/// Settings of the per-filter streaming POT estimator (docs/method.md §3).
///
/// Validate once at the edge with `validate()`; the statistics only `assert`.
public struct POTConfiguration: Sendable, Hashable, Codable {
    /// Quantile level of the initial threshold `t` (paper: 0.90).
    public var level: Double = 0.90
    /// Risk `q`: per-observation probability of an extreme exceedance under the null.
    public var q: Double = 1e-4
    /// Calibration size `n_cal`: predictions used to set thresholds and the first fit.
    public var calibration: Int = 1000
    /// Capacity of each filter's ring of peaks (oldest forgotten). Float32 storage.
    public var maxPeaks: Int = 256
    /// Minimum peaks for a GPD fit; below it the filter uses its empirical tail and says so.
    public var minPeaks: Int = 10
    /// A filter is due for a refit after this many new peaks (`m` of docs/method.md §3).
    public var refitAfterPeaks: Int = 32
    /// Refits the update path may spend per prediction (fractional: 0.05 = one every 20 rows).
    /// Due filters wait in FIFO order; the daemon also refits due filters when idle.
    public var refitsPerRow: Double = 0.25
    /// DSPOT drift window `d` (0 = off, the default).
    public var driftWindow: Int = 0
    /// Ring sampling stride `m` (a power of two; 0 = automatic, the default): every peak counts
    /// in `N_t` and towards a refit, and every m-th enters the ring, which therefore holds a
    /// systematic sample of the newest `m · maxPeaks` peaks. Automatic: the largest power of two
    /// ≤ `(1 − level)·K / (refitsPerRow · maxPeaks)` (1 when refits are not budgeted), so that the
    /// ring spans about one refit period at full load instead of being overwritten many times
    /// between two fits of the same filter. See docs/statistics.md, "Ring sampling".
    public var peakStride: Int = 0
    /// Tails watched per filter (`upper` by default; docs/statistics.md, "Two tails").
    public var tails: TailSelection = .upper
    /// What the bank monitors: the raw row or a common-mode-free transform of it (`none` by
    /// default; docs/statistics.md, "Common-mode-free scorers"). The owner applies the transform.
    public var transform: RowTransformKind = .none

    /// The risk each watched tail gets: `q`, or `q/2` for `both` (the budget is shared).
    public var tailQ: Double { tails == .both ? q / 2 : q }

    public init() {}

    public init(level: Double = 0.90, q: Double = 1e-4, calibration: Int = 1000, maxPeaks: Int = 256,
                minPeaks: Int = 10, refitAfterPeaks: Int = 32, refitsPerRow: Double = 0.25, driftWindow: Int = 0) {
        self.level = level
        self.q = q
        self.calibration = calibration
        self.maxPeaks = maxPeaks
        self.minPeaks = minPeaks
        self.refitAfterPeaks = refitAfterPeaks
        self.refitsPerRow = refitsPerRow
        self.driftWindow = driftWindow
    }

    /// The ring sampling stride for a bank of `filterCount` filters (resolves `peakStride = 0`).
    public func effectiveStride(filterCount: Int) -> Int {
        if peakStride > 0 { return peakStride }
        guard refitsPerRow > 0 else { return 1 }
        let span = (1 - level) * Double(filterCount) / (refitsPerRow * Double(maxPeaks))
        var m = 1
        while Double(m * 2) <= span, m < 1 << 20 { m *= 2 }
        return m
    }

    /// Largest `calibration` accepted (the calibration buffer holds `calibration × K` floats).
    public static let maxCalibration = 1_000_000

    /// Checks every field and explains what is wrong.
    public func validate() throws(SaliencyError) {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.invalidConfiguration, m) }
        guard level > 0, level < 1 else { throw bad("level must be in (0, 1), got \(level)") }
        guard q > 0, q < 1 - level else {
            throw bad("q must be in (0, 1 - level) = (0, \(1 - level)), got \(q): the extreme threshold must lie above the initial threshold")
        }
        guard calibration >= 10, calibration <= Self.maxCalibration else {
            throw bad("calibration must be in 10...\(Self.maxCalibration) predictions, got \(calibration)")
        }
        guard Double(calibration) * (1 - level) + 1e-9 >= Double(minPeaks) else {
            throw bad("calibration × (1 − level) = \(Int((Double(calibration) * (1 - level)).rounded())) expected peaks is below min_peaks = \(minPeaks); raise calibration or lower level")
        }
        guard maxPeaks >= 8, maxPeaks <= 65_536 else { throw bad("max_peaks must be in 8...65536, got \(maxPeaks)") }
        guard minPeaks >= 3, minPeaks <= maxPeaks else { throw bad("min_peaks must be in 3...max_peaks, got \(minPeaks)") }
        guard refitAfterPeaks >= 1, refitAfterPeaks <= 1 << 20 else { throw bad("refit_after_peaks must be in 1...1048576, got \(refitAfterPeaks)") }
        guard refitsPerRow >= 0, refitsPerRow <= 1e6 else { throw bad("refits_per_row must be in 0...1e6, got \(refitsPerRow)") }
        guard driftWindow >= 0, driftWindow <= 100_000 else { throw bad("drift_window must be in 0...100000, got \(driftWindow)") }
        if driftWindow > 0 {
            // DSPOT seeds the drift windows with the first d calibration rows and calibrates on the rest.
            let residuals = calibration - driftWindow
            guard residuals > 0, Double(residuals) * (1 - level) + 1e-9 >= Double(minPeaks) else {
                throw bad("drift_window = \(driftWindow) leaves calibration − drift_window = \(residuals) residuals, too few for min_peaks = \(minPeaks) at level \(level) (need ≥ \(Int((Double(minPeaks) / (1 - level)).rounded(.up)))); raise calibration or lower drift_window")
            }
        }
        guard driftWindow == 0 || tails == .upper else {
            throw bad("tails = \"\(tails.rawValue)\" needs drift_window = 0: the lower tail is not implemented for DSPOT residuals")
        }
        guard peakStride >= 0, peakStride <= 1 << 20, peakStride & (peakStride - 1) == 0 || peakStride == 0 else {
            throw bad("peak_stride must be 0 (automatic) or a power of two up to 1048576, got \(peakStride)")
        }
    }
}
