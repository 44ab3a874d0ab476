/// Which standardization ranks filters (docs/method.md §2).
public enum ScoreKind: String, Sendable, Hashable, Codable, CaseIterable {
    /// POT saliency: `−log10` of the GPD tail probability (Wang & Sato 2023).
    case pot
    /// z-score saliency: `(s − μ)/σ` over the reference set (Levin et al. 2022).
    case zscore
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
