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
        return pooled(sum)
    }

    /// Writes the pooled z-score of every filter of `row` into `out` (count K). One pass over the
    /// moments: `out` holds the means until σ is known.
    public func pooledZScores(_ row: UnsafeBufferPointer<Float>, into out: UnsafeMutableBufferPointer<Double>) {
        precondition(row.count == filterCount && out.count == filterCount)
        var sum = 0.0
        for j in 0..<filterCount {
            let (mean, sd) = moments(j)
            out[j] = mean
            sum += sd * sd
        }
        let sd = pooled(sum)
        for j in 0..<filterCount { out[j] = (Double(row[j]) - out[j]) / sd }
    }

    /// σ from the sum of the K variances (1 when below 1e-14).
    private func pooled(_ sumOfVariances: Double) -> Double {
        let sd = (sumOfVariances / Double(filterCount)).squareRoot()
        return sd < 1e-14 ? 1 : sd
    }
}
