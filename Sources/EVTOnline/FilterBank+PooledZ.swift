/// The pooled z-score (docs/statistics.md, "Pooled z-score"): `z_j = (s_j − μ_j)/σ`, where μ_j is
/// filter j's mean and `σ² = (1/K) Σ_i σ_i²` pools the (unbiased) variances of all K filters.
/// Moments as `moments(_:)` gives them (calibration plus every absorbed non-extreme row, the open
/// block included). For a quantity whose units every filter shares (the tap's Taylor blame: the
/// loss a filter's removal would save), the ranking is the excess over each filter's own mean in
/// those units; a per-filter σ_j would turn small wiggles of a filter that was quiet in
/// calibration into large z.
extension FilterBank {
    /// σ pooled over every filter (1 when below 1e-14, as for `zScore`).
    public func pooledStandardDeviation() -> Double {
        var sum = 0.0
        for j in 0..<filterCount {
            let sd = moments(j).standardDeviation
            sum += sd * sd
        }
        let pooled = (sum / Double(filterCount)).squareRoot()
        return pooled < 1e-14 ? 1 : pooled
    }

    /// Writes the pooled z-score of every filter of `row` into `out` (count K).
    public func pooledZScores(_ row: UnsafeBufferPointer<Float>, into out: UnsafeMutableBufferPointer<Double>) {
        precondition(row.count == filterCount && out.count == filterCount)
        let sd = pooledStandardDeviation()
        for j in 0..<filterCount { out[j] = (Double(row[j]) - moments(j).mean) / sd }
    }
}
