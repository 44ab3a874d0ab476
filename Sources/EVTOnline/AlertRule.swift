// Alert rule: turns per-filter extreme exceedances (probability q each under the null) into
// alerts whose false-alarm rate is held to a budget stated as an expected run time (ERT).
// Design and derivation: docs/alerting.md. State machine: AlertTracker.swift.
import RealModule
import SaliencyCore

// MARK: - Budget

/// A model's false-alarm budget, stated as an expected run time (ERT): the expected number of
/// predictions between false alerts, as Alibi Detect's online detectors state theirs
/// (Van Looveren et al., `alibi-detect`, "expected run-time").
///
/// The budget bounds the **expected number** of false alerts (filter-level plus model-level) per
/// prediction by `1 / expectedRunTime`. By linearity of expectation this holds whatever the
/// correlation between filters; the **variance** of the count does not: correlated filters fire
/// together, so false alerts arrive in bursts (docs/alerting.md, "What is not guaranteed").
public struct AlertBudget: Sendable, Hashable, Codable {
    /// Predictions between false alerts, in expectation. Default 1,000,000: at 10–100
    /// predictions/s that is one false alert every 3–28 hours, which a person can afford to read.
    public var expectedRunTime: Double
    /// Share of the budget given to the model-level shift alert (the rest goes to filter alerts).
    /// 0 disables the model-level alert. Default 0.1.
    public var modelShare: Double

    public init(expectedRunTime: Double = 1_000_000, modelShare: Double = 0.1) {
        self.expectedRunTime = expectedRunTime
        self.modelShare = modelShare
    }

    /// Expected false alerts per prediction allowed by the budget: `1 / expectedRunTime`.
    public var falseAlertsPerPrediction: Double { 1 / expectedRunTime }

    /// Checks every field and explains what is wrong.
    public func validate() throws(SaliencyError) {
        guard expectedRunTime.isFinite, expectedRunTime >= 10, expectedRunTime <= 1e15 else {
            throw SaliencyError(.invalidConfiguration, "alert budget: expected_run_time must be in 10...1e15 predictions, got \(expectedRunTime)")
        }
        guard modelShare >= 0, modelShare < 1 else {
            throw SaliencyError(.invalidConfiguration, "alert budget: model_share must be in [0, 1), got \(modelShare); 0 disables the model-level alert")
        }
    }
}

// MARK: - Model-level rule

/// Where the model-level rule's null sample (the histogram of distinct extreme filters per row)
/// comes from (docs/alerting.md §4).
public enum ModelShiftNullSample: String, Sendable, Hashable, Codable, CaseIterable {
    /// 2-fold cross-fitting on the calibration rows (`FilterBank.crossFitHistogram`): the CUSUM
    /// runs from the first monitored row. If the bank cannot cross-fit (restored after its
    /// calibration rows were freed, or half the calibration is too short for the POT settings), the
    /// tracker falls back to a burn-in of `burnIn` rows.
    case crossFit = "cross_fit"
    /// The first `burnIn` monitored rows (the rule before issue 13); model alerts are off meanwhile.
    case burnIn = "burn_in"
}

/// The model-level shift alert: a Bernoulli CUSUM (Page 1954) on the per-prediction indicator
/// "this row has at least `r` extreme filters", whose null rate is **estimated** from a sample of
/// rows (held-out calibration rows by default, `nullSample`), because filters of one layer are
/// strongly correlated (docs/method.md §7) and no binomial across filters describes the null.
///
/// Guarantee: with `h = log(expectedRunTime)` and the CUSUM's increments the log-likelihood ratio of
/// `Bernoulli(π1)` against `Bernoulli(π0)`, the in-control average run length is at least `e^h`
/// whenever the true indicator rate is at most `π0` (Lorden 1971, via the one-sided SPRT bound
/// `P(cross h) ≤ e^{-h}`). `π0` is an upper confidence bound (`confidence`) of the null-sample estimate.
public struct ModelShiftRule: Sendable, Hashable, Codable {
    /// Where the null sample comes from (default: cross-fitting on the calibration rows).
    public var nullSample: ModelShiftNullSample
    /// Rows of the burn-in (`nullSample = .burnIn`, or the cross-fit's fallback) used to estimate
    /// the null rate before the CUSUM starts. Model alerts are off meanwhile.
    public var burnIn: Int
    /// Expected predictions between false model-level alerts (`budget.expectedRunTime / modelShare`).
    /// `.infinity` disables the model-level alert.
    public var expectedRunTime: Double
    /// Rate ratio the CUSUM is tuned to detect: `π1 = min(shiftRatio · π0, (1 + π0)/2)`.
    public var shiftRatio: Double
    /// The row threshold `r` is the smallest `r ≥ 1` whose burn-in rate `P(extremes in row ≥ r)` is at
    /// most this (so that a rise of the rate is visible). Capped at `maxRowThreshold`.
    public var maxNullRate: Double
    /// Largest row threshold `r` (the burn-in histogram has `maxRowThreshold + 1` bins).
    public var maxRowThreshold: Int
    /// One-sided confidence of the Clopper–Pearson upper bound used as `π0`.
    public var confidence: Double

    public init(burnIn: Int = 10_000, expectedRunTime: Double = 10_000_000, shiftRatio: Double = 2,
                maxNullRate: Double = 0.5, maxRowThreshold: Int = 256, confidence: Double = 0.999,
                nullSample: ModelShiftNullSample = .crossFit) {
        self.nullSample = nullSample
        self.burnIn = burnIn
        self.expectedRunTime = expectedRunTime
        self.shiftRatio = shiftRatio
        self.maxNullRate = maxNullRate
        self.maxRowThreshold = maxRowThreshold
        self.confidence = confidence
    }

    /// Whether the model-level alert runs at all.
    public var isEnabled: Bool { expectedRunTime.isFinite }

    /// Bins of a null-sample histogram (`maxRowThreshold + 1`; the last counts `≥ maxRowThreshold`).
    public var histogramBins: Int { maxRowThreshold + 1 }

    private enum CodingKeys: String, CodingKey {
        case nullSample, burnIn, expectedRunTime, shiftRatio, maxNullRate, maxRowThreshold, confidence
    }

    /// Snapshots written before `nullSample` existed decode as `.crossFit`: a model restored while
    /// still calibrating then cross-fits; one restored mid-burn-in (calibration rows already freed)
    /// finishes its burn-in, because the tracker burns in whenever it is not calibrated.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        nullSample = try c.decodeIfPresent(ModelShiftNullSample.self, forKey: .nullSample) ?? .crossFit
        burnIn = try c.decode(Int.self, forKey: .burnIn)
        expectedRunTime = try c.decode(Double.self, forKey: .expectedRunTime)
        shiftRatio = try c.decode(Double.self, forKey: .shiftRatio)
        maxNullRate = try c.decode(Double.self, forKey: .maxNullRate)
        maxRowThreshold = try c.decode(Int.self, forKey: .maxRowThreshold)
        confidence = try c.decode(Double.self, forKey: .confidence)
    }

    /// CUSUM decision threshold `h = log(expectedRunTime)` (for firing and, mirrored, for resolving).
    public var threshold: Double { Double.log(expectedRunTime) }

    public func validate() throws(SaliencyError) {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.invalidConfiguration, "model shift rule: " + m) }
        guard burnIn >= 100, burnIn <= 100_000_000 else { throw bad("burn_in must be in 100...1e8 rows, got \(burnIn)") }
        guard expectedRunTime == .infinity || (expectedRunTime >= 10 && expectedRunTime <= 1e300) else {
            throw bad("expected_run_time must be ≥ 10 or +∞ (disabled), got \(expectedRunTime)")
        }
        guard shiftRatio > 1, shiftRatio.isFinite else { throw bad("shift_ratio must be > 1, got \(shiftRatio)") }
        guard maxNullRate > 0, maxNullRate < 1 else { throw bad("max_null_rate must be in (0, 1), got \(maxNullRate)") }
        guard maxRowThreshold >= 1, maxRowThreshold <= 65_536 else { throw bad("max_row_threshold must be in 1...65536, got \(maxRowThreshold)") }
        guard confidence >= 0.5, confidence < 1 else { throw bad("confidence must be in [0.5, 1), got \(confidence)") }
    }

    /// Derives the CUSUM from a null-sample histogram (`histogram[j]` = rows with `j` distinct
    /// extreme filters, the last bin counting `≥ maxRowThreshold`): held-out calibration rows
    /// (cross-fit) or burn-in rows. O(bins + 200 tail evaluations).
    public func calibrate(histogram: [UInt64], source: ModelShiftNullSample = .burnIn) -> ModelShiftCalibration {
        let rows = histogram.reduce(0, +)
        precondition(rows > 0, "calibrate needs at least one null-sample row")
        // Rows with ≥ r extremes, for increasing r: pick the first r whose rate is ≤ maxNullRate.
        var atLeast = rows - histogram[0]
        var r = 1
        while r < maxRowThreshold, r < histogram.count - 1, Double(atLeast) / Double(rows) > maxNullRate {
            atLeast -= histogram[r]
            r += 1
        }
        let estimate = Double(atLeast) / Double(rows)
        let pi0 = BinomialTail.upperConfidenceBound(successes: Int(atLeast), trials: Int(rows), confidence: confidence)
        let pi1 = Swift.min(shiftRatio * pi0, (1 + pi0) / 2)
        return ModelShiftCalibration(rowThreshold: r, burnInRows: Int(rows), estimatedRate: estimate,
                                     nullRate: pi0, shiftedRate: pi1, threshold: threshold, source: source)
    }
}

/// What the null sample gave; fixed for the rest of the run (persisted in snapshots).
public struct ModelShiftCalibration: Sendable, Hashable, Codable {
    /// A row counts as a hit when it has at least this many distinct extreme filters.
    public var rowThreshold: Int
    /// Rows in the null sample (held-out calibration rows for a cross-fit, burn-in rows otherwise;
    /// the name predates the cross-fit and is kept for snapshots).
    public var burnInRows: Int
    /// Null-sample hit rate (point estimate).
    public var estimatedRate: Double
    /// `π0`: the upper confidence bound of the hit rate the CUSUM treats as the null.
    public var nullRate: Double
    /// `π1`: the hit rate the CUSUM is tuned to detect.
    public var shiftedRate: Double
    /// `h`.
    public var threshold: Double
    /// Where the null sample came from (snapshots written before the cross-fit decode as `.burnIn`).
    public var source: ModelShiftNullSample

    public init(rowThreshold: Int, burnInRows: Int, estimatedRate: Double, nullRate: Double, shiftedRate: Double, threshold: Double,
                source: ModelShiftNullSample = .burnIn) {
        self.rowThreshold = rowThreshold
        self.burnInRows = burnInRows
        self.estimatedRate = estimatedRate
        self.nullRate = nullRate
        self.shiftedRate = shiftedRate
        self.threshold = threshold
        self.source = source
    }

    private enum CodingKeys: String, CodingKey {
        case rowThreshold, burnInRows, estimatedRate, nullRate, shiftedRate, threshold, source
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        rowThreshold = try c.decode(Int.self, forKey: .rowThreshold)
        burnInRows = try c.decode(Int.self, forKey: .burnInRows)
        estimatedRate = try c.decode(Double.self, forKey: .estimatedRate)
        nullRate = try c.decode(Double.self, forKey: .nullRate)
        shiftedRate = try c.decode(Double.self, forKey: .shiftedRate)
        threshold = try c.decode(Double.self, forKey: .threshold)
        source = try c.decodeIfPresent(ModelShiftNullSample.self, forKey: .source) ?? .burnIn
    }

    /// CUSUM increment for a hit row, `log(π1/π0) > 0`.
    public var hitIncrement: Double { Double.log(shiftedRate / nullRate) }
    /// CUSUM increment for a miss row, `log((1-π1)/(1-π0)) < 0`.
    public var missIncrement: Double { Double.log(onePlus: -shiftedRate) - Double.log(onePlus: -nullRate) }

    /// Approximate expected delay (rows) to fire when the true hit rate becomes `rate > π0`:
    /// `h / E[increment]` (Lorden's first-order approximation; ignores overshoot, so slightly low).
    /// `+∞` when the drift is not positive.
    public func approximateDetectionDelay(rate: Double) -> Double {
        let drift = rate * hitIncrement + (1 - rate) * missIncrement
        return drift > 0 ? threshold / drift : .infinity
    }
}

// MARK: - Per-filter rule

/// The per-filter alert rule: a filter **fires** when `fireCount` (`c`) of its last `window` (`m`)
/// predictions were extreme exceedances, and **resolves** once its count has stayed below
/// `resolveBelow` (`L`) for `m` consecutive predictions (hysteresis: fire at `c`, clear below `L ≤ c`).
///
/// False alerts (per filter, per prediction, under an i.i.d. Bernoulli(`q`) null for that filter):
/// a firing at row `t` requires an extreme at `t` **and** at least `c − 1` extremes in the `m − 1`
/// rows before it, so the firing rate is at most
///
///     q · P(Binomial(m − 1, q) ≥ c − 1)
///
/// (the sliding-window first-passage rate, about `c` times the naive `P(Binomial(m, q) ≥ c)/m` for
/// disjoint windows). Summed over `K` filters this bounds the expected false filter alerts per
/// prediction by linearity, whatever the correlation between filters.
public struct AlertRule: Sendable, Hashable, Codable {
    /// `m`: predictions in the sliding window.
    public var window: Int
    /// `c`: extremes within the window that fire the filter (also the ring size per filter).
    public var fireCount: Int
    /// `L`: the filter resolves after its window count stays `< L` for `m` predictions. `1 ≤ L ≤ c`.
    public var resolveBelow: Int
    /// The model-level shift alert.
    public var model: ModelShiftRule

    public init(window: Int, fireCount: Int, resolveBelow: Int, model: ModelShiftRule = ModelShiftRule()) {
        self.window = window
        self.fireCount = fireCount
        self.resolveBelow = resolveBelow
        self.model = model
    }

    /// Checks the fields and explains what is wrong.
    public func validate() throws(SaliencyError) {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.invalidConfiguration, "alert rule: " + m) }
        guard fireCount >= 1, fireCount <= 64 else { throw bad("fire_count c must be in 1...64, got \(fireCount)") }
        guard window >= fireCount, window <= 1_000_000 else {
            throw bad("window m must be in c...1000000 = \(fireCount)...1000000, got \(window)")
        }
        guard resolveBelow >= 1, resolveBelow <= fireCount else {
            throw bad("resolve_below L must be in 1...c = 1...\(fireCount), got \(resolveBelow)")
        }
        try model.validate()
    }

    /// Upper bound on the expected number of false **filter** alerts per prediction for `filters`
    /// filters each exceeding with probability `q`: `K · q · P(Bin(m−1, q) ≥ c−1)`. O(c) or O(m).
    public func falseAlertsPerPrediction(filters: Int, q: Double) -> Double {
        Double(filters) * q * Double.exp(BinomialTail.logSurvival(atLeast: fireCount - 1, trials: window - 1, probability: q))
    }

    /// Upper bound on all expected false alerts per prediction: filter alerts plus the model-level
    /// alert's `1/ERT_model` (the latter assumes the null sample's `π0` bounds the monitored hit rate).
    public func totalFalseAlertsPerPrediction(filters: Int, q: Double) -> Double {
        falseAlertsPerPrediction(filters: filters, q: q) + (model.isEnabled ? 1 / model.expectedRunTime : 0)
    }

    /// `P(T > t)` for `t = 0 ... m`, where `T` is the number of predictions after a filter's
    /// exceedance probability jumps to `p1` until it fires, from an empty history (earlier extremes
    /// only shorten `T`). For `t ≤ m` the window covers every post-shift row, so
    /// `P(T > t) = P(Bin(t, p1) < c)` exactly. O(m·c), allocates c doubles.
    private func survival(p1: Double, _ body: (Int, Double) -> Bool) {
        let c = fireCount
        var mass = [Double](repeating: 0, count: c)  // mass[j]: P(j successes so far, j < c)
        mass[0] = 1
        var alive = 1.0
        if !body(0, alive) { return }
        for t in 1...window {
            for j in stride(from: c - 1, to: 0, by: -1) { mass[j] = mass[j] * (1 - p1) + mass[j - 1] * p1 }
            mass[0] *= (1 - p1)
            alive = 0
            for j in 0..<c { alive += mass[j] }
            if !body(t, alive) { return }
        }
    }

    /// Upper bound on the expected detection delay, in predictions from the shift onset to the
    /// firing prediction inclusive, for a filter whose exceedance probability jumps to `p1`:
    ///
    ///     E[T] = Σ_{t≥0} P(T > t) ≤ Σ_{t<m} P(Bin(t, p1) < c) + m·β/(1 − β),   β = P(Bin(m, p1) < c)
    ///
    /// (the tail uses disjoint windows of `m` rows, each failing independently with probability β).
    /// Tight when β is small, i.e. when `m·p1` is well above `c`. `+∞` if `p1 ≤ 0`. O(m·c).
    public func expectedDetectionDelay(p1: Double) -> Double {
        guard p1 > 0 else { return .infinity }
        var sum = 0.0
        var beta = 1.0
        var negligible = false
        survival(p1: p1) { t, alive in
            // Once every remaining term (each ≤ alive, `alive` only falls) and the tail term
            // m·β/(1−β) are below half an ulp of the sum, adding them cannot change it: stop. The
            // result is bit-identical to the full O(m·c) pass, in ~c/p1 steps instead of m
            // (alert-rule designs are on the schema path; docs/security.md).
            if t > 0, alive * Double(window) * 4 < sum.ulp / 2 { negligible = true; return false }
            if t < window { sum += alive } else { beta = alive }
            return true
        }
        if negligible { return sum }
        guard beta < 1 else { return .infinity }
        return sum + Double(window) * beta / (1 - beta)
    }

    /// Upper bound on the `probability`-quantile of the detection delay for a shift to `p1`: the
    /// smallest `t ≤ m` with `P(Bin(t, p1) ≥ c) ≥ probability`; beyond `m`, `m·⌈log(1−probability)/log β⌉`.
    /// `nil` when no shift is detectable (`p1 ≤ 0`). O(m·c).
    public func detectionDelayQuantile(p1: Double, probability: Double = 0.99) -> Int? {
        precondition(probability > 0 && probability < 1)
        guard p1 > 0 else { return nil }
        var found: Int? = nil
        var beta = 1.0
        survival(p1: p1) { t, alive in
            if 1 - alive >= probability { found = t; return false }
            if t == window { beta = alive }
            return true
        }
        if let found { return found }
        guard beta < 1 else { return nil }
        let blocks = (Double.log(1 - probability) / Double.log(beta)).rounded(.up)
        return blocks * Double(window) < 1e15 ? window * Int(blocks) : nil
    }

    /// Designs `(m, c, L)` from the budget.
    ///
    /// The filter-level share of the budget, `(1 − modelShare)/ERT`, must hold at the **inflated**
    /// risk `safetyFactor · q` (default 2: SPOT's realised alarm rate may lie in `[0.5, 2]·q`,
    /// docs/method.md §6): for each `c = 1...maxFireCount` the largest `m ≤ maxWindow` with
    /// `K · sq · P(Bin(m−1, sq) ≥ c−1) ≤ (1 − modelShare)/ERT` is found by bisection, and the
    /// `(m, c)` with the smallest `expectedDetectionDelay(p1: designShift)` wins (ties: smaller `c`).
    /// `L = ⌈c/2⌉`. The model-level alert gets `ERT / modelShare`.
    ///
    /// Cost: O(maxFireCount · (log maxWindow · m + m·c)) at configuration time; never on the hot path.
    public static func design(
        filters: Int, q: Double, budget: AlertBudget = AlertBudget(), safetyFactor: Double = 2,
        designShift: Double = 0.1, maxWindow: Int = 10_000, maxFireCount: Int = 16,
        model: ModelShiftRule = ModelShiftRule()
    ) throws(SaliencyError) -> AlertRule {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.invalidConfiguration, "alert design: " + m) }
        try budget.validate()
        guard filters >= 1, filters <= 1 << 24 else { throw bad("filters must be in 1...\(1 << 24), got \(filters)") }
        guard q > 0, q < 0.5 else { throw bad("q must be in (0, 0.5), got \(q)") }
        guard safetyFactor >= 1, safetyFactor * q < 1 else {
            throw bad("safety_factor must be ≥ 1 with safety_factor × q < 1, got \(safetyFactor) × \(q)")
        }
        guard designShift > safetyFactor * q, designShift < 1 else {
            throw bad("design_shift p1 must be in (safety_factor × q, 1) = (\(safetyFactor * q), 1), got \(designShift): a shift must raise the exceedance rate")
        }
        guard maxWindow >= 1, maxWindow <= 1_000_000 else { throw bad("max_window must be in 1...1000000, got \(maxWindow)") }
        guard maxFireCount >= 1, maxFireCount <= 64 else { throw bad("max_fire_count must be in 1...64, got \(maxFireCount)") }
        var modelRule = model
        modelRule.expectedRunTime = budget.modelShare > 0 ? budget.expectedRunTime / budget.modelShare : .infinity
        try modelRule.validate()

        let sq = safetyFactor * q
        let target = (1 - budget.modelShare) / budget.expectedRunTime
        let logTarget = Double.log(target / (Double(filters) * sq))  // need log P(Bin(m-1, sq) ≥ c-1) ≤ this
        var best: AlertRule? = nil
        var bestDelay = Double.infinity
        for c in 1...maxFireCount where c <= maxWindow {
            func ok(_ m: Int) -> Bool { BinomialTail.logSurvival(atLeast: c - 1, trials: m - 1, probability: sq) <= logTarget }
            guard ok(c) else { continue }
            var lo = c, hi = maxWindow  // ok(lo) holds; find the largest ok m
            if ok(hi) { lo = hi } else {
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2
                    if ok(mid) { lo = mid } else { hi = mid }
                }
            }
            let candidate = AlertRule(window: lo, fireCount: c, resolveBelow: (c + 1) / 2, model: modelRule)
            let delay = candidate.expectedDetectionDelay(p1: designShift)
            if delay < bestDelay { best = candidate; bestDelay = delay }
        }
        guard let best else {
            throw bad("no window m ≤ \(maxWindow) with fire count c ≤ \(maxFireCount) keeps \(filters) filters at q = \(q) (× safety \(safetyFactor)) within ERT = \(budget.expectedRunTime); raise max_fire_count or max_window, or lower expected_run_time")
        }
        guard bestDelay.isFinite else {
            throw bad("design_shift p1 = \(designShift) cannot reach c = \(best.fireCount) extremes within m = \(best.window) predictions; raise design_shift or max_window")
        }
        return best
    }
}

// MARK: - Binomial tail

/// Binomial tail probabilities in log space, accurate for tiny probabilities.
///
/// `logSurvival(atLeast: k, trials: n, probability: p) = log P(Binomial(n, p) ≥ k)`. The smaller side
/// of the distribution is summed from its largest term outward (ratios of consecutive pmf terms, all
/// `≤ 1`, so the running sum is relative to the first term and never underflows); the other side is
/// `log(−expm1(·))` of it, which never cancels because the summed side then holds at most about
/// half the mass. `log C(n, k)` is a sum of `log((n−k+i)/i)` for `min(k, n−k) ≤ 64` and
/// `logGamma` otherwise. Checked against exact 60-digit sums and `scipy.stats.binom.logsf` to
/// 1e-9 absolute in the log (Tests/EVTOnlineTests/Fixtures/gen_alert_reference.py). O(number of terms until the next one
/// is below 1e-17 of the sum) — O(k) or O(n − k) in the worst case.
public enum BinomialTail {
    static func logChoose(_ n: Int, _ k: Int) -> Double {
        let k = Swift.min(k, n - k)
        if k <= 0 { return 0 }
        if k <= 64 {
            var s = 0.0
            for i in 1...k { s += Double.log(Double(n - k + i) / Double(i)) }
            return s
        }
        return Double.logGamma(Double(n + 1)) - Double.logGamma(Double(k + 1)) - Double.logGamma(Double(n - k + 1))
    }

    /// log P(X = j), X ~ Binomial(n, p), 0 < p < 1.
    static func logPMF(_ j: Int, _ n: Int, _ p: Double) -> Double {
        logChoose(n, j) + Double(j) * Double.log(p) + Double(n - j) * Double.log(onePlus: -p)
    }

    /// `log P(Binomial(n, p) ≥ k)`; `0` for `k ≤ 0`, `−∞` for `k > n`. `p` in `[0, 1]`, `n ≥ 0`.
    public static func logSurvival(atLeast k: Int, trials n: Int, probability p: Double) -> Double {
        precondition(n >= 0 && p >= 0 && p <= 1, "binomial tail needs n ≥ 0 and p in [0, 1]")
        if k <= 0 { return 0 }
        if k > n || p == 0 { return -.infinity }
        if p == 1 { return 0 }
        let odds = p / (1 - p)
        let mode = Int((Double(n + 1) * p).rounded(.down))
        if k > mode {
            // Upper side, terms decreasing from j = k.
            var sum = 1.0, term = 1.0
            var j = k
            while j < n {
                term *= Double(n - j) / Double(j + 1) * odds
                sum += term
                if term < sum * 1e-17 { break }
                j += 1
            }
            return logPMF(k, n, p) + Double.log(sum)
        } else {
            // Lower side P(X ≤ k−1), terms decreasing from j = k−1 downward.
            var sum = 1.0, term = 1.0
            var j = k - 1
            while j > 0 {
                term *= Double(j) / (Double(n - j + 1) * odds)
                sum += term
                if term < sum * 1e-17 { break }
                j -= 1
            }
            let logLower = logPMF(k - 1, n, p) + Double.log(sum)
            return Double.log(-Double.expMinusOne(logLower))
        }
    }

    /// One-sided Clopper–Pearson upper bound: the `π` with `P(Binomial(trials, π) ≤ successes) = 1 − confidence`.
    /// Bisection on `π` (100 steps, ~1e-30 absolute). `1` when `successes == trials`.
    public static func upperConfidenceBound(successes x: Int, trials n: Int, confidence: Double) -> Double {
        precondition(n >= 1 && x >= 0 && x <= n && confidence > 0 && confidence < 1)
        if x == n { return 1 }
        let alpha = 1 - confidence
        var lo = Double(x) / Double(n), hi = 1.0
        for _ in 0..<100 {
            let mid = (lo + hi) / 2
            // P(X ≤ x) = 1 − P(X ≥ x+1), decreasing in π.
            let cdf = -Double.expMinusOne(logSurvival(atLeast: x + 1, trials: n, probability: mid))
            if cdf > alpha { lo = mid } else { hi = mid }
        }
        return hi
    }
}
