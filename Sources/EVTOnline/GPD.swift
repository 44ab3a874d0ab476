import RealModule

/// The generalized Pareto distribution with location 0 (Pickands 1975), the limit law of
/// excesses over a high threshold.
///
///     P(Y > y) = (1 + γ y/σ)^(−1/γ)      γ ≠ 0,  y ≥ 0, and 1 + γ y/σ > 0
///     P(Y > y) = exp(−y/σ)                γ = 0
///
/// - Invariant: `scale > 0`, both parameters finite (checked by `precondition` in `init`).
/// - Shape zero: `|shape| < GPD.zeroShapeTolerance` (1e-12) is treated as the exponential
///   case everywhere in this module (here, in `POT`, in the fit), so formulas never divide by a
///   shape that is zero in all but name.
/// - Bounded support: for `γ < 0` the support ends at `σ/|γ|` (`endpoint`). Beyond it the
///   survival is exactly 0, the log-survival −∞ and the log-likelihood −∞; never NaN
///   (defect 3 of docs/method.md §4).
/// - NaN: only a NaN argument gives a NaN result; `quantile(survival:)` also returns NaN for a
///   probability outside `[0, 1]` (and asserts in debug builds).
/// - Complexity: O(1) per evaluation, O(k) for `logLikelihood` over `k` excesses.
///
/// Reference: J. Pickands III, "Statistical inference using extreme order statistics",
/// Annals of Statistics 3 (1975) 119–131.
public struct GPD: Sendable, Hashable {
    /// Shape γ (ξ in some texts). γ > 0: heavy (Pareto-like) tail; γ = 0: exponential;
    /// γ < 0: bounded tail ending at `endpoint`.
    public var shape: Double
    /// Scale σ > 0.
    public var scale: Double

    /// Shapes with a magnitude below this are the exponential case (1e-12).
    public static let zeroShapeTolerance = 1e-12

    public init(shape: Double, scale: Double) {
        precondition(shape.isFinite, "GPD shape must be finite, got \(shape)")
        precondition(scale > 0 && scale.isFinite, "GPD scale must be positive and finite, got \(scale)")
        self.shape = shape
        self.scale = scale
    }

    /// Whether the shape counts as zero (`|γ| < 1e-12`).
    public var isExponential: Bool { abs(shape) < GPD.zeroShapeTolerance }

    /// `σ/|γ|` for `γ < 0` (the largest possible excess), `nil` for an unbounded tail.
    public var endpoint: Double? {
        (!isExponential && shape < 0) ? scale / -shape : nil
    }

    /// `P(Y > y)`: 1 for `y ≤ 0`, exactly 0 at or beyond the endpoint (γ < 0).
    /// Computed as `exp(logSurvival)`, i.e. through `log(onePlus:)`, accurate for small `γy/σ`.
    public func survival(excess y: Double) -> Double {
        if y <= 0 { return 1 }
        return .exp(logSurvival(excess: y))
    }

    /// `log P(Y > y)`: 0 for `y ≤ 0`, −∞ at or beyond the endpoint (γ < 0), never NaN for a
    /// non-NaN `y`. `−log(1 + γy/σ)/γ` via `log(onePlus:)`; `−y/σ` for γ = 0.
    public func logSurvival(excess y: Double) -> Double {
        if y <= 0 { return 0 }
        if isExponential { return -y / scale }
        let z = shape * y / scale
        if z <= -1 { return -.infinity }
        return -Double.log(onePlus: z) / shape
    }

    /// The excess `y` with `P(Y > y) = p`: `σ((p^(−γ) − 1)/γ)`, computed as
    /// `σ·expm1(−γ log p)/γ`; `−σ log p` for γ = 0. `p = 1` gives 0; `p = 0` gives +∞
    /// (γ ≥ 0) or the endpoint (γ < 0). NaN for `p` outside `[0, 1]`.
    public func quantile(survival p: Double) -> Double {
        assert(p >= 0 && p <= 1, "survival probability must be in [0, 1], got \(p)")
        guard p >= 0, p <= 1 else { return .nan }
        let lp = Double.log(p)
        if isExponential { return -scale * lp }
        return scale * Double.expMinusOne(-shape * lp) / shape
    }

    /// Log-density of one excess: `−log σ − (1 + 1/γ) log(1 + γy/σ)`; `−log σ − y/σ` for γ = 0.
    /// −∞ for `y < 0` or where `1 + γy/σ ≤ 0` (outside the support).
    public func logDensity(excess y: Double) -> Double {
        if y < 0 { return -.infinity }
        if isExponential { return -Double.log(scale) - y / scale }
        let z = shape * y / scale
        if z <= -1 { return -.infinity }
        return -Double.log(scale) - (1 + 1 / shape) * Double.log(onePlus: z)
    }

    /// Log-likelihood of excesses `y`:
    ///
    ///     ℓ = −k log σ − (1 + 1/γ) Σ log(1 + γ y_i/σ)      (γ = 0: −k log σ − Σ y_i/σ)
    ///
    /// with the correct (negative) sign of the exponential term (defect 2 of docs/method.md §4).
    /// −∞ if any `y_i` is negative or at/beyond the endpoint (γ < 0); 0 for no excesses.
    /// O(k), one `log(onePlus:)` per excess; allocation-free.
    public func logLikelihood(_ y: UnsafeBufferPointer<Double>) -> Double {
        let k = Double(y.count)
        if y.isEmpty { return 0 }
        let logScale = Double.log(scale)
        if isExponential {
            var sum = 0.0
            for v in y {
                if v < 0 { return -.infinity }
                sum += v
            }
            return -k * logScale - sum / scale
        }
        let x = shape / scale
        var sum = 0.0
        for v in y {
            let z = x * v
            if v < 0 || z <= -1 { return -.infinity }
            sum += Double.log(onePlus: z)
        }
        return -k * logScale - (1 + 1 / shape) * sum
    }
}

extension GPD {
    /// Log-likelihood of excesses `y` plus right-censored excesses `c` (known only to exceed
    /// `c_j`): `Σ log f(y_i) + Σ log P(Y > c_j)`. −∞ if any value is outside the support.
    public func logLikelihood(_ y: UnsafeBufferPointer<Double>, censored c: UnsafeBufferPointer<Double>) -> Double {
        var ll = logLikelihood(y)
        for v in c { ll += logSurvival(excess: v) }
        return ll
    }
}

/// The peaks-over-threshold formulas shared by `SPOT` and the vectorized FilterBank
/// (docs/method.md §2–§3). Pure functions, O(1), allocation-free.
///
/// Notation: `t` the initial threshold, `n` the number of observations in the model,
/// `N_t` (`nt`) the number of peaks (excesses over `t`) among them, `q` the risk.
public enum POT {
    /// The extreme threshold at risk `q` (docs/method.md §3; Siffer et al. KDD 2017, eq. 1):
    ///
    ///     z_q = t + (σ/γ)((q n / N_t)^(−γ) − 1)        γ ≠ 0
    ///     z_q = t − σ log(q n / N_t)                    γ = 0 (|γ| < 1e-12)
    ///
    /// computed with `expm1` for accuracy at small |γ|. For γ < 0 the result is at most
    /// `t + endpoint`. Requires `q > 0`, `n > 0`, `nt > 0` (asserted); `q n < N_t` makes
    /// `z_q > t`.
    public static func extremeThreshold(threshold t: Double, gpd: GPD, q: Double, n: Double, peaks nt: Double) -> Double {
        assert(q > 0 && n > 0 && nt > 0, "extremeThreshold needs q, n, N_t > 0")
        let logR = Double.log(q * n / nt)
        if gpd.isExponential { return t - gpd.scale * logR }
        return t + gpd.scale * Double.expMinusOne(-gpd.shape * logR) / gpd.shape
    }

    /// The tail probability of a value `s` above the threshold (docs/method.md §2):
    /// `p = (N_t/n) · P(Y > s − t)`. Exactly 0 beyond the endpoint of a γ < 0 fit (so its
    /// score is +∞ and it ranks first, defect 3). For `s ≤ t` it returns `N_t/n`, the
    /// probability of exceeding the threshold itself; below-threshold values need the
    /// caller's empirical tail instead.
    public static func tailProbability(value s: Double, threshold t: Double, gpd: GPD, n: Double, peaks nt: Double) -> Double {
        assert(n > 0 && nt >= 0, "tailProbability needs n > 0, N_t ≥ 0")
        return (nt / n) * gpd.survival(excess: s - t)
    }

    /// The POT saliency score `−log10 p`: +∞ for `p == 0`, 0 for `p == 1`, NaN only for NaN.
    public static func score(p: Double) -> Double {
        if p <= 0 { return .infinity }
        return -Double.log10(p)
    }

    /// The empirical quantile of sorted values at `level` with numpy's default ("linear",
    /// Hyndman & Fan type 7) definition: `h = (n − 1)·level`, `i = ⌊h⌋`,
    /// `Q = a[i] + (h − i)(a[i+1] − a[i])`, evaluated as numpy does (from the upper neighbour
    /// when `h − i ≥ 0.5`), so `numpy.quantile(a, level)` reproduces it.
    /// Precondition: `sorted` non-empty and ascending; `level ∈ [0, 1]`. O(1).
    public static func linearQuantile(sorted a: UnsafeBufferPointer<Double>, level: Double) -> Double {
        precondition(!a.isEmpty, "quantile of an empty sample")
        assert(level >= 0 && level <= 1)
        let h = Double(a.count - 1) * level
        let lo = min(Int(h.rounded(.down)), a.count - 1)
        let hi = min(lo + 1, a.count - 1)
        let g = h - Double(lo)
        let d = a[hi] - a[lo]
        return g >= 0.5 ? a[hi] - d * (1 - g) : a[lo] + d * g
    }
}
