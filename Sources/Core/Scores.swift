/// Which standardization ranks filters (docs/method.md §2), optionally after a common-mode-free
/// row transform (docs/statistics.md, "Common-mode-free scorers").
public enum ScoreKind: String, Sendable, Hashable, Codable, CaseIterable {
    /// POT saliency: `−log10` of the GPD tail probability (Wang & Sato 2023).
    case pot
    /// z-score saliency: `(s − μ)/σ` over the reference set (Levin et al. 2022).
    case zscore
    /// POT on the per-layer log-residual row (`RowTransformKind.layerLogres`).
    case logresPot = "logres-pot"
    /// z-score on the per-layer log-residual row.
    case logresZscore = "logres-zscore"
    /// POT on the per-layer ratio row (`RowTransformKind.layerRatio`).
    case ratioPot = "ratio-pot"
    /// z-score on the per-layer ratio row.
    case ratioZscore = "ratio-zscore"
    /// `(s − μ_j)/σ`: filter j's own reference mean, the standard deviation pooled over all the
    /// model's filters, `σ² = mean_i σ_i²` (docs/statistics.md, "Pooled z-score"). For a quantity
    /// in units shared by every filter (the tap's Taylor blame, in loss units), where a per-filter
    /// σ would magnify filters that were quiet in calibration.
    case pooledZscore = "pooled-zscore"

    /// The tail model applied after the transform: `.pot` or `.zscore`.
    public var tailModel: ScoreKind {
        switch self {
        case .pot, .logresPot, .ratioPot: .pot
        case .zscore, .logresZscore, .ratioZscore: .zscore
        case .pooledZscore: .pooledZscore
        }
    }

    /// The row transform applied before the tail model.
    public var transform: RowTransformKind {
        switch self {
        case .pot, .zscore, .pooledZscore: .none
        case .logresPot, .logresZscore: .layerLogres
        case .ratioPot, .ratioZscore: .layerRatio
        }
    }

    /// The scorer that applies `tail` (`.pot`, `.zscore` or `.pooledZscore`) after `transform`
    /// (`.pooledZscore` exists for raw rows only; with a transform it stays `.pooledZscore`, which
    /// callers refuse: see `ModelEngine.resolve`).
    public init(tail: ScoreKind, transform: RowTransformKind) {
        if tail.tailModel == .pooledZscore { self = .pooledZscore; return }
        let pot = tail.tailModel == .pot
        switch transform {
        case .none: self = pot ? .pot : .zscore
        case .layerLogres: self = pot ? .logresPot : .logresZscore
        case .layerRatio: self = pot ? .ratioPot : .ratioZscore
        }
    }

    /// Every name, for help texts and errors: "pot, zscore, logres-pot, …".
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }
}

/// What a model's FilterBank monitors: the raw saliency row, or a common-mode-free transform of
/// it (docs/statistics.md, "Common-mode-free scorers"; `RowTransform` in EVTOnline computes them).
public enum RowTransformKind: String, Sendable, Hashable, Codable, CaseIterable {
    /// The raw saliency row.
    case none
    /// `y_i = (s_i + ε)/G_l`, `G_l` the geometric mean of `s_j + ε` over filter i's layer,
    /// `ε = max(0.01·mean_l(s), least normal float)` per row and layer; `log y` is the per-layer
    /// log-residual.
    case layerLogres = "layer-logres"
    /// `y_i = s_i / (mean_l(s) + ε)`, the same per-row `ε`.
    case layerRatio = "layer-ratio"
}

/// What the loss of a prediction was computed against (docs/method.md §1).
public enum TargetKind: UInt8, Sendable, Hashable, Codable {
    case predicted = 0
    case trueLabel = 1
}

/// Why a saliency row was refused before it could touch any statistic.
public enum RowRejection: String, Sendable, Hashable, Codable, CaseIterable {
    /// The row's width is not the schema's filter count.
    case wrongWidth = "wrong_width"
    /// The row contains NaN or ±∞.
    case nonFinite = "non_finite"
    /// The row contains a negative value; saliencies are magnitudes.
    case negative = "negative"
}

/// One filter's place in a ranking.
public struct RankedFilter: Sendable, Hashable, Codable {
    public var filter: Int
    /// The score: `−log10 p` for POT (may be +∞), the z-score otherwise.
    public var score: Double
    /// The tail probability `p` (POT only).
    public var p: Double?

    public init(filter: Int, score: Double, p: Double? = nil) {
        self.filter = filter
        self.score = score
        self.p = p
    }
}
