/// Running mean and variance (Welford 1962), mergeable (Chan, Golub & LeVeque 1979).
///
/// Used for the z-score saliency baseline (docs/method.md §2): `μ_j`, the unbiased `σ_j`, and
/// `(s − μ_j)/σ_j` with σ replaced by 1 below 1e-14.
///
/// - Invariant: `count ≥ 0`; `m2 ≥ 0` (up to rounding); `count == 0` ⇒ `mean == 0 && m2 == 0`.
/// - Complexity: O(1) per `add` and `merge`; no allocation.
/// - NaN/∞: adding a non-finite value poisons the statistics (callers validate input);
///   `variance` is 0, never NaN, for fewer than 2 values.
/// - Accuracy: the streaming update avoids the cancellation of `Σx²/n − mean²`.
public struct Welford: Sendable, Hashable {
    public private(set) var count: Int = 0
    public private(set) var mean: Double = 0
    /// Sum of squared deviations from the mean.
    public private(set) var m2: Double = 0

    /// σ below this counts as zero in `zScore` (docs/method.md §2).
    public static let minimumStandardDeviation = 1e-14

    public init() {}

    /// Restores a saved state (e.g. from a snapshot). Precondition: `count ≥ 0`, `m2 ≥ 0`.
    public init(count: Int, mean: Double, m2: Double) {
        precondition(count >= 0 && m2 >= 0, "Welford state needs count ≥ 0 and m2 ≥ 0")
        self.count = count
        self.mean = count == 0 ? 0 : mean
        self.m2 = count == 0 ? 0 : m2
    }

    public mutating func add(_ x: Double) {
        count += 1
        let delta = x - mean
        mean += delta / Double(count)
        m2 += delta * (x - mean)
    }

    /// Combines two summaries as if all values had been added to one (Chan et al. 1979):
    /// `δ = mean_b − mean_a`, `mean = mean_a + δ n_b/n`, `m2 = m2_a + m2_b + δ² n_a n_b/n`.
    public mutating func merge(_ other: Welford) {
        if other.count == 0 { return }
        if count == 0 { self = other; return }
        let na = Double(count), nb = Double(other.count)
        let n = na + nb
        let delta = other.mean - mean
        mean += delta * (nb / n)
        m2 += other.m2 + delta * delta * (na * nb / n)
        count += other.count
    }

    /// Unbiased variance `m2/(n − 1)`; 0 for fewer than two values.
    public var variance: Double { count < 2 ? 0 : m2 / Double(count - 1) }

    public var standardDeviation: Double { variance.squareRoot() }

    /// `(x − mean)/σ`, with σ = 1 when σ < 1e-14 (docs/method.md §2).
    public func zScore(_ x: Double) -> Double {
        let sd = standardDeviation
        return (x - mean) / (sd < Welford.minimumStandardDeviation ? 1 : sd)
    }
}
