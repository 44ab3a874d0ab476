import CKernels
import RealModule

/// How a `GPDFit` was obtained.
public enum GPDFitMethod: UInt8, Sendable {
    /// A root of Grimshaw's equation `w(x) = 0` (a local maximum of the profile likelihood).
    case grimshaw
    /// The exponential candidate `γ = 0, σ = mean(Y)` had the largest likelihood.
    case exponential
    /// The method-of-moments candidate had the largest likelihood.
    case moments
    /// Fewer peaks than the minimum: the returned `gpd` is the exponential `σ = mean(Y)`
    /// (σ = 1 when there are no positive peaks) and is only a placeholder; the caller must fall
    /// back to its empirical tail and say so (defect 4 of docs/method.md §4).
    case insufficientPeaks
}

/// The result of a GPD fit to `peakCount` excesses.
public struct GPDFit: Sendable, Hashable {
    public var gpd: GPD
    /// Log-likelihood of the peaks under `gpd` (docs/method.md §4, correct sign for γ = 0).
    public var logLikelihood: Double
    public var method: GPDFitMethod
    /// Uncensored peaks the fit used.
    public var peakCount: Int
    /// Right-censored peaks the fit used (0 unless the caller passed some; see `SPOT`).
    public var censoredCount: Int

    public init(gpd: GPD, logLikelihood: Double, method: GPDFitMethod, peakCount: Int, censoredCount: Int = 0) {
        self.gpd = gpd
        self.logLikelihood = logLikelihood
        self.method = method
        self.peakCount = peakCount
        self.censoredCount = censoredCount
    }
}

/// Maximum-likelihood GPD fit by Grimshaw's method (Grimshaw 1993), done as docs/method.md §4 asks.
///
/// With `x = γ/σ`, `u(x) = 1 + mean log(1 + xY)`, `v(x) = mean 1/(1 + xY)` and
/// `w(x) = u(x)v(x) − 1`, the profile log-likelihood is `ℓ_p(x) = −k(log((u − 1)/x) + u)` and
/// `dℓ_p/dx = w(x) / (x(u(x) − 1))` with a positive denominator, so the roots of `w` are exactly
/// the stationary points of `ℓ_p` and `w` has the sign of the slope. The fitter
///
/// 1. scans `w` on a fixed grid of `negativeGrid` points in `(−1/max Y, 0)` (dense near the
///    pole `−1/max Y`) and up to `positiveGrid` points in `(0, 2(mean − min)/min²]`
///    (geometric in `x·mean Y`, ε = 1e-4/mean Y at both ends near 0, capped at `x·mean ≤ 1e10`);
/// 2. refines every bracket where `w` goes from + to − (a local maximum of `ℓ_p`) by Brent's
///    method to a relative tolerance of 1e-8 in `x`. Brackets where `w` goes from − to + are
///    local minima of `ℓ_p`; each is dominated by a maximum or by the exponential candidate next
///    to it, so skipping them changes no result;
/// 3. adds the exponential candidate (`x = 0`: γ = 0, σ = mean) and the method-of-moments
///    candidate, and keeps the largest log-likelihood. At a root candidate the log-likelihood
///    is `ℓ_p(x) = −k(log σ + 1 + γ)` exactly, so it costs nothing extra.
///
/// Cost. The scan runs in single precision on `Y/mean` (SIMD4<Float>, fdlibm `logf`
/// polynomial, one division per peak for both the log and the reciprocal); where `|w|` is
/// within a conservative bound of the single-precision rounding (near roots and near x = 0),
/// that grid point is re-evaluated in double precision, so every sign the scan acts on is
/// exact. Brent and the candidates' likelihoods use double-precision passes (fdlibm `log`
/// polynomial, ~1 ulp, with the `log1p` correction `(t − (a − 1))/a`). A typical fit is ~19
/// single- plus 8–13 double-precision passes over the peaks; see docs/statistics.md for times.
///
/// - Allocation: none after `init`; the fitter owns a scratch buffer for `capacity` peaks.
/// - Ownership: `~Copyable`, so one owner at a time; `fit` is `mutating`. It is
///   `@unchecked Sendable` because its only state is the uniquely owned scratch buffer: moving
///   the fitter moves the buffer, and `fit` needs exclusive (`inout`) access.
/// - Censoring: an optional second sample of right-censored peaks (values known only to exceed
///   a point) enters as `log P(Y > c)`; `SPOT` uses it for extreme exceedances.
/// - Input: peaks must be finite and `≥ 0` (asserted in debug builds); `count ≤ capacity`
///   (precondition). Fewer than `max(minPeaks, 3)` peaks give `.insufficientPeaks`.
/// - Output: never NaN; `gpd.scale > 0`.
///
/// Reference: S. D. Grimshaw, "Computing maximum likelihood estimates for the generalized
/// Pareto distribution", Technometrics 35(2) (1993) 185–191.
public struct GrimshawFitter: ~Copyable, @unchecked Sendable {
    /// Number of peaks `fit` accepts.
    public let capacity: Int
    private let scratch: UnsafeMutablePointer<Double>
    private let scratchCount: Int
    /// The kernel variant of the fit's inner sums (given at init; the same bits for every variant).
    let kernels: FilterBank.Kernels

    public init(capacity: Int, kernels: FilterBank.Kernels = .best) {
        precondition(capacity >= 0, "capacity must be ≥ 0")
        self.capacity = capacity
        self.kernels = kernels
        // Room for peaks and censored peaks, each padded to the vector width.
        self.scratchCount = GrimshawCore.scratchBound(capacity)
        self.scratch = .allocate(capacity: scratchCount)
        self.scratch.initialize(repeating: 0, count: scratchCount)
    }

    deinit { scratch.deallocate() }

    private var buffer: UnsafeMutableBufferPointer<Double> { UnsafeMutableBufferPointer(start: scratch, count: scratchCount) }

    /// Fits a GPD to `peaks` (excesses over the threshold). O(k · passes), allocation-free.
    public mutating func fit(_ peaks: UnsafeBufferPointer<Double>, minPeaks: Int) -> GPDFit {
        precondition(peaks.count <= capacity, "GrimshawFitter capacity \(capacity) exceeded by \(peaks.count) peaks")
        for i in 0..<peaks.count { scratch[i] = peaks[i] }
        return GrimshawCore.fit(scratch: buffer, count: peaks.count, minPeaks: minPeaks, kernels: kernels)
    }

    /// Converts `peaks` into the Double scratch buffer, then fits. Allocation-free.
    public mutating func fit(_ peaks: UnsafeBufferPointer<Float>, minPeaks: Int) -> GPDFit {
        precondition(peaks.count <= capacity, "GrimshawFitter capacity \(capacity) exceeded by \(peaks.count) peaks")
        for i in 0..<peaks.count { scratch[i] = Double(peaks[i]) }
        return GrimshawCore.fit(scratch: buffer, count: peaks.count, minPeaks: minPeaks, kernels: kernels)
    }

    /// Fits with right-censored peaks: each `censored` value `c` is known only to satisfy
    /// `Y > c` and contributes `log P(Y > c)` to the likelihood instead of a log-density. The
    /// profile stays one-dimensional (`γ(x) = (Σ log(1 + xY) + Σ log(1 + xC))/k`, `σ = γ/x`), so
    /// the same scan and Brent apply. `minPeaks` counts uncensored peaks.
    /// Precondition: `peaks.count + censored.count ≤ capacity`.
    public mutating func fit(_ peaks: UnsafeBufferPointer<Double>, censored: UnsafeBufferPointer<Double>,
                             minPeaks: Int) -> GPDFit {
        precondition(peaks.count + censored.count <= capacity,
                     "GrimshawFitter capacity \(capacity) exceeded by \(peaks.count + censored.count) peaks")
        return Self.fit(peaks, censored: censored, minPeaks: minPeaks, scratch: buffer)
    }

    /// The censored fit on Float rings (as the FilterBank stores them). Allocation-free.
    public mutating func fit(_ peaks: UnsafeBufferPointer<Float>, censored: UnsafeBufferPointer<Float>,
                             minPeaks: Int) -> GPDFit {
        precondition(peaks.count + censored.count <= capacity,
                     "GrimshawFitter capacity \(capacity) exceeded by \(peaks.count + censored.count) peaks")
        let k = peaks.count, offset = GrimshawCore.paddedCount(k)
        for i in 0..<k { scratch[i] = Double(peaks[i]) }
        for i in 0..<censored.count { scratch[offset + i] = Double(censored[i]) }
        return GrimshawCore.fit(scratch: buffer, count: k, censored: censored.count, minPeaks: minPeaks, kernels: kernels)
    }

    /// Fits using a caller-provided scratch buffer of at least
    /// `scratchCount(for: peaks.count, censored: censored.count)` doubles (e.g. from
    /// `withUnsafeTemporaryAllocation`), for callers that cannot keep a fitter.
    public static func fit(_ peaks: UnsafeBufferPointer<Double>,
                           censored: UnsafeBufferPointer<Double> = UnsafeBufferPointer(start: nil, count: 0),
                           minPeaks: Int, scratch: UnsafeMutableBufferPointer<Double>) -> GPDFit {
        precondition(scratch.count >= scratchCount(for: peaks.count, censored: censored.count), "scratch too small")
        let k = peaks.count, offset = GrimshawCore.paddedCount(k)
        for i in 0..<k { scratch[i] = peaks[i] }
        for i in 0..<censored.count { scratch[offset + i] = censored[i] }
        return GrimshawCore.fit(scratch: scratch, count: k, censored: censored.count, minPeaks: minPeaks)
    }

    /// Scratch doubles needed by the static `fit`.
    public static func scratchCount(for count: Int, censored: Int = 0) -> Int {
        GrimshawCore.scratchCount(count, censored)
    }

    /// Points of the sign scan on the negative side `(−1/max Y, 0)`.
    public static var negativeGrid: Int { GrimshawCore.negativeRho.count }
    /// Maximum points of the sign scan on the positive side (fewer when `2(mean − min)/min²` is small).
    public static var positiveGrid: Int { GrimshawCore.positiveXi.count + 1 }
}

/// The fitting algorithm on a scratch buffer whose first `count` entries hold the peaks.
/// Internal so tests can reach the grid settings and a dense-grid variant.
enum GrimshawCore {
    /// Lanes of the vectorized pass.
    static let lanes = 4

    static func paddedCount(_ n: Int) -> Int { max(lanes, (n + lanes - 1) / lanes * lanes) }
    /// Float lanes per iteration of the single-precision scan (two SIMD4<Float>).
    static func paddedCount8(_ n: Int) -> Int { max(8, (n + 7) / 8 * 8) }

    /// Doubles of scratch for `k` peaks and `m` censored peaks: the Double copies (padded to 4)
    /// followed by the normalized Float copies (padded to 8) used by the scan.
    static func scratchCount(_ k: Int, _ m: Int) -> Int {
        paddedCount(k) + (m > 0 ? paddedCount(m) : 0) + (paddedCount8(k) + (m > 0 ? paddedCount8(m) : 0)) / 2
    }

    /// An upper bound of `scratchCount(k, m)` over `k + m ≤ capacity`.
    static func scratchBound(_ capacity: Int) -> Int { capacity + 8 + (capacity + 16) / 2 + 8 }

    /// Negative side: `x = −(1 − ρ)/max Y`, ρ ascending (so x ascending), dense near the pole
    /// ρ → 0 where bounded-tail (γ < 0) maxima live, ending at the ε point `x = −1e-4/max Y`.
    static let negativeRho: [Double] = [1e-4, 5e-4, 2e-3, 8e-3, 0.03, 0.1, 0.25, 0.5, 0.9999]
    /// Positive side: `x = ξ/mean Y`, ξ ascending; truncated at the upper bound
    /// `ξ_c = 2 mean(mean − min)/min²`, which is appended as the last point.
    static let positiveXi: [Double] = [1e-4, 0.03, 0.15, 0.5, 1.5, 5, 20, 200, 1e4, 1e6, 1e8, 1e10]

    /// Relative tolerance of Brent's method in `x`.
    static let brentTolerance = 1e-8
    static let brentMaxIterations = 60

    /// Fits on `scratch`, whose first `k` entries hold the peaks and, when `m > 0`, whose
    /// entries from `paddedCount(k)` on hold `m` right-censored peaks (known only to exceed the
    /// stored value). Padding is written here.
    static func fit(scratch: UnsafeMutableBufferPointer<Double>, count k: Int, censored m: Int = 0, minPeaks: Int,
                    denseGrid: Int = 0, kernels: FilterBank.Kernels = .best) -> GPDFit {
        let table = kernels.table
        let y = scratch.baseAddress!
        let pk = paddedCount(k)
        let pm = m > 0 ? paddedCount(m) : 0
        precondition(scratch.count >= pk + pm, "scratch too small")
        // Zero padding contributes log(1) = 0 and t·r = 0 to the sums of a pass.
        for i in k..<pk { y[i] = 0 }
        for i in (pk + m)..<(pk + pm) { y[i] = 0 }

        var sumY = 0.0, sumC = 0.0, minY = Double.infinity, maxY = 0.0
        for i in 0..<k {
            let v = y[i]
            assert(v >= 0 && v.isFinite, "peaks must be finite and ≥ 0, got \(v)")
            sumY += v
            minY = min(minY, v)
            maxY = max(maxY, v)
        }
        for i in pk..<(pk + m) {
            let v = y[i]
            assert(v >= 0 && v.isFinite, "censored peaks must be finite and ≥ 0, got \(v)")
            sumC += v
            minY = min(minY, v)
            maxY = max(maxY, v)
        }
        let kd = Double(k)
        let all = Double(k + m)
        // Exponential MLE with censoring: σ = (Σy + Σc)/k.
        let expScale = k > 0 ? (sumY + sumC) / kd : 0

        guard k >= max(minPeaks, 3), expScale > 0 else {
            let scale = expScale > 0 ? expScale : 1
            let ll = expScale > 0 ? -kd * (Double.log(scale) + 1) : 0
            return GPDFit(gpd: GPD(shape: 0, scale: scale), logLikelihood: ll, method: .insufficientPeaks,
                          peakCount: k, censoredCount: m)
        }
        // Grid scale: the mean of all values (peaks and censoring points).
        let mean = (sumY + sumC) / all

        // Exponential candidate, x = 0: ℓ = −k(log σ + 1).
        var best = GPDFit(gpd: GPD(shape: 0, scale: expScale), logLikelihood: -kd * (Double.log(expScale) + 1),
                          method: .exponential, peakCount: k, censoredCount: m)

        let evaluator = Evaluator(y: y, padded: pk, censored: y + pk, censoredPadded: pm, k: kd, kernel: table.grimshaw_sums_f64)

        // Single-precision copies of Y/mean (and C/mean) for the sign scan.
        let fk = paddedCount8(k), fm = m > 0 ? paddedCount8(m) : 0
        // The Float region is bound to Float only for this scope; the Doubles never overlap it.
        (y + pk + pm).withMemoryRebound(to: Float.self, capacity: fk + fm) { yf in
            let invMean = 1 / mean
            for i in 0..<k { yf[i] = Float(y[i] * invMean) }
            for i in k..<fk { yf[i] = 0 }
            for i in 0..<m { yf[fk + i] = Float(y[pk + i] * invMean) }
            for i in (fk + m)..<(fk + fm) { yf[i] = 0 }
            let scanner = FloatScanner(y: yf, padded: fk, censored: yf + fk, censoredPadded: fm, k: Float(kd), kernel: table.grimshaw_sums_f32)

            func consider(x: Double, e: Evaluation) {
                // γ = (Σ log(1 + xY) + Σ log(1 + xC))/k, σ = γ/x; ℓ = −k(log σ + 1 + Σ log(1 + xY)/k).
                let gamma = e.gamma
                let sigma = gamma / x
                guard sigma > 0, sigma.isFinite, gamma.isFinite else { return }
                if abs(gamma) < GPD.zeroShapeTolerance { return } // the exponential candidate covers it
                let ll = -kd * (Double.log(sigma) + 1 + e.logMeanY)
                if ll > best.logLikelihood {
                    best = GPDFit(gpd: GPD(shape: gamma, scale: sigma), logLikelihood: ll, method: .grimshaw,
                                  peakCount: k, censoredCount: m)
                }
            }

            // Scan one side; refine each + → − sign change. The sign of w at a grid point comes
            // from the single-precision pass unless |w| is within its error bound, in which case
            // (and always at the ends of a bracket) the double-precision pass decides.
            func scan(_ xs: (Int) -> Double, count: Int) {
                var prevX = 0.0
                var prev = Evaluation(w: 0, gamma: 0, logMeanY: 0)
                for i in 0..<count {
                    let x = xs(i)
                    var cur: Evaluation
                    if denseGrid > 0 {
                        cur = evaluator.evaluate(x)
                    } else {
                        let f = scanner.evaluate(xi: x * mean)
                        cur = abs(f.w) <= f.errorBound ? evaluator.evaluate(x) : f.approximate
                    }
                    if i > 0, prev.w > 0, cur.w <= 0 {
                        // Only the signs of the ends matter to Brent, and they are exact; every
                        // point Brent evaluates is double precision.
                        var root = brent(evaluator, a: prevX, fa: prev, b: x, fb: cur)
                        if root.x == x || root.x == prevX { root.e = evaluator.evaluate(root.x) }
                        consider(x: root.x, e: root.e)
                    }
                    prevX = x
                    prev = cur
                }
            }

            // Negative side (−1/max, 0); max > 0 since the mean is.
            if denseGrid > 0 {
                scan({ i in -(1 - (Double(i) + 0.5) / Double(denseGrid)) / maxY }, count: denseGrid)
            } else {
                scan({ i in -(1 - negativeRho[i]) / maxY }, count: negativeRho.count)
            }

            // Positive side (ε, 2(mean − min)/min²], in ξ = x·mean.
            if minY < mean {
                let xiC = minY > 0 ? 2 * mean * (mean - minY) / (minY * minY) : .infinity
                let xiHi = min(xiC, positiveXi[positiveXi.count - 1])
                if denseGrid > 0 {
                    let lo = Double.log(positiveXi[0]), hi = Double.log(xiHi)
                    scan({ i in Double.exp(lo + (hi - lo) * Double(i) / Double(denseGrid - 1)) / mean }, count: denseGrid)
                } else {
                    var j = 0
                    while j < positiveXi.count, positiveXi[j] < xiHi { j += 1 }
                    scan({ i in (i < j ? positiveXi[i] : xiHi) / mean }, count: j + 1)
                }
            }
        }

        // Method of moments on the uncensored peaks: γ = (1 − mean²/var)/2, σ = mean(1 + mean²/var)/2.
        let meanY = sumY / kd
        var ss = 0.0
        for i in 0..<k { let d = y[i] - meanY; ss += d * d }
        let variance = ss / (kd - 1)
        if variance > 0, meanY > 0 {
            let ratio = meanY * meanY / variance
            let gamma = 0.5 * (1 - ratio)
            let sigma = 0.5 * meanY * (1 + ratio)
            let x = gamma / sigma
            if abs(gamma) >= GPD.zeroShapeTolerance, sigma > 0, sigma.isFinite, 1 + x * maxY > 0 {
                // ℓ = −k log σ − (1 + 1/γ) Σ log(1 + xY) − (1/γ) Σ log(1 + xC)
                let e = evaluator.evaluate(x)
                let sumLogY = kd * e.logMeanY
                let sumLogC = kd * e.gamma - sumLogY
                let ll = -kd * Double.log(sigma) - (1 + 1 / gamma) * sumLogY - sumLogC / gamma
                if ll.isFinite, ll > best.logLikelihood {
                    best = GPDFit(gpd: GPD(shape: gamma, scale: sigma), logLikelihood: ll, method: .moments,
                                  peakCount: k, censoredCount: m)
                }
            }
        }
        return best
    }

    struct Evaluation {
        /// A function with the sign of `dℓ_p/dx`. Without censoring it is Grimshaw's
        /// `w(x) = u v − 1`, computed as `L + V + L·V` (`L = u − 1`, `V = v − 1`) so that it keeps
        /// its relative accuracy near x = 0. With `m` censored values it is
        /// `γ(1 + V) + V − T_c/k`, `T_c = Σ xC/(1 + xC)`, which reduces to `w` for `m = 0`.
        var w: Double
        /// The profile shape `γ(x) = (Σ log(1 + xY) + Σ log(1 + xC))/k`.
        var gamma: Double
        /// `Σ log(1 + xY)/k` over the uncensored peaks (equals `gamma` without censoring).
        var logMeanY: Double
    }

    struct Evaluator {
        let y: UnsafeMutablePointer<Double>
        let padded: Int
        let censored: UnsafeMutablePointer<Double>
        let censoredPadded: Int
        let k: Double
        let kernel: @convention(c) (UnsafePointer<Double>?, Int64, Double, UnsafeMutablePointer<Double>?, UnsafeMutablePointer<Double>?) -> Void

        init(y: UnsafeMutablePointer<Double>, padded: Int, censored: UnsafeMutablePointer<Double>? = nil,
             censoredPadded: Int = 0, k: Double,
             kernel: @escaping @convention(c) (UnsafePointer<Double>?, Int64, Double, UnsafeMutablePointer<Double>?, UnsafeMutablePointer<Double>?) -> Void = FilterBank.Kernels.best.table.grimshaw_sums_f64) {
            self.y = y
            self.padded = padded
            self.censored = censored ?? y
            self.censoredPadded = censoredPadded
            self.k = k
            self.kernel = kernel
        }

        func evaluate(_ x: Double) -> Evaluation {
            let (sy, ty) = sums(y, padded, x)
            let l = sy / k
            let v = -ty / k
            if censoredPadded == 0 {
                return Evaluation(w: l + v + l * v, gamma: l, logMeanY: l)
            }
            let (sc, tc) = sums(censored, censoredPadded, x)
            let gamma = l + sc / k
            return Evaluation(w: gamma * (1 + v) + v - tc / k, gamma: gamma, logMeanY: l)
        }

        /// One vectorized pass: `(Σ log(1 + xY), Σ xY/(1 + xY))` (`saliency_grimshaw_sums_f64`:
        /// AVX2 or SSE2 at run time, the same bits either way; the arithmetic is `term` below, for
        /// reference). Requires `1 + x max Y > 0`; `count` a multiple of 4.
        @inline(__always)
        private func sums(_ p: UnsafeMutablePointer<Double>, _ count: Int, _ x: Double) -> (Double, Double) {
            var l = 0.0, v = 0.0
            kernel(p, Int64(count), x, &l, &v)
            return (l, v)
        }

        /// `(log(1 + t), t/(1 + t))` for `t = x y`, lane-wise, with one division for both the
        /// reciprocal and the log's `f/(2 + f)`. The kernel's per-element steps; tests compare.
        @inline(__always)
        static func term(_ x: SIMD2<Double>, _ y: SIMD2<Double>) -> (SIMD2<Double>, SIMD2<Double>) {
            let t = x * y
            let a = 1 + t
            let (logA, r) = logAndReciprocal(a)
            // log1p(t) = log(a) + (t − (a − 1))/a: the second term restores what rounding 1 + t lost.
            return (logA + (t - (a - 1)) * r, t * r)
        }
    }

    /// The single-precision sign scan: the same sums as `Evaluator` on `Y/mean` (so `ξ = x·mean`
    /// keeps every product in Float range), four lanes per SSE register, with an error bound.
    struct FloatScanner {
        let y: UnsafeMutablePointer<Float>
        let padded: Int
        let censored: UnsafeMutablePointer<Float>
        let censoredPadded: Int
        let k: Float
        let kernel: @convention(c) (UnsafePointer<Float>?, Int64, Float, UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Float>?) -> Void

        struct Result {
            var w: Double
            /// |w| at or below this may have the wrong sign (a conservative bound on the
            /// single-precision rounding of the sums, which are sums of same-signed terms).
            var errorBound: Double
            /// The same quantities in single precision, for Brent's interpolation only.
            var approximate: Evaluation
        }

        func evaluate(xi: Double) -> Result {
            let x = Float(xi)
            let (sy, ty) = sums(y, padded, x)
            let l = Double(sy) / Double(k)
            let v = -Double(ty) / Double(k)
            var w: Double, bound: Double, gammaF = l
            if censoredPadded == 0 {
                w = l + v + l * v
                bound = abs(l) * (1 + abs(v)) + abs(v) * (1 + abs(l))
            } else {
                let (sc, tc) = sums(censored, censoredPadded, x)
                let gamma = l + Double(sc) / Double(k)
                let c = Double(tc) / Double(k)
                w = gamma * (1 + v) + v - c
                bound = abs(gamma) * (1 + abs(v)) + abs(v) * (1 + abs(gamma)) + abs(c)
                gammaF = gamma
            }
            return Result(w: w, errorBound: 2e-5 * bound + 1e-30,
                          approximate: Evaluation(w: w, gamma: gammaF, logMeanY: l))
        }

        /// `(Σ log(1 + xY), Σ xY/(1 + xY))` in single precision (`saliency_grimshaw_sums_f32`,
        /// eight partial sums in a fixed tree); `count` a multiple of 8.
        @inline(__always)
        private func sums(_ p: UnsafeMutablePointer<Float>, _ count: Int, _ x: Float) -> (Float, Float) {
            var l: Float = 0, v: Float = 0
            kernel(p, Int64(count), x, &l, &v)
            return (l, v)
        }
    }

    /// Brent's root finder (zeroin) on `w` in a bracket with `w(a) > 0 ≥ w(b)`.
    static func brent(_ f: Evaluator, a a0: Double, fa fa0: Evaluation, b b0: Double, fb fb0: Evaluation)
        -> (x: Double, e: Evaluation)
    {
        var a = a0, b = b0, c = a0
        var fa = fa0, fb = fb0, fc = fa0
        var d = b - a, e = d
        let tol = brentTolerance * max(abs(a0), abs(b0))
        for _ in 0..<brentMaxIterations {
            if (fb.w > 0 && fc.w > 0) || (fb.w < 0 && fc.w < 0) {
                c = a; fc = fa; d = b - a; e = d
            }
            if abs(fc.w) < abs(fb.w) {
                a = b; b = c; c = a
                fa = fb; fb = fc; fc = fa
            }
            let tol1 = 2 * Double.ulpOfOne * abs(b) + 0.5 * tol
            let xm = 0.5 * (c - b)
            if abs(xm) <= tol1 || fb.w == 0 { return (b, fb) }
            if abs(e) >= tol1 && abs(fa.w) > abs(fb.w) {
                let s = fb.w / fa.w
                var p: Double, q: Double
                if a == c {
                    p = 2 * xm * s
                    q = 1 - s
                } else {
                    let qq = fa.w / fc.w, r = fb.w / fc.w
                    p = s * (2 * xm * qq * (qq - r) - (b - a) * (r - 1))
                    q = (qq - 1) * (r - 1) * (s - 1)
                }
                if p > 0 { q = -q }
                p = abs(p)
                let min1 = 3 * xm * q - abs(tol1 * q)
                let min2 = abs(e * q)
                if 2 * p < min(min1, min2) {
                    e = d; d = p / q
                } else {
                    d = xm; e = d
                }
            } else {
                d = xm; e = d
            }
            a = b; fa = fb
            b += abs(d) > tol1 ? d : (xm >= 0 ? tol1 : -tol1)
            fb = f.evaluate(b)
        }
        return (b, fb)
    }
}

// MARK: - Vectorized natural logarithm

private let lg1 = 6.666666666666735130e-01
private let lg2 = 3.999999999940941908e-01
private let lg3 = 2.857142874366239149e-01
private let lg4 = 2.222219843214978396e-01
private let lg5 = 1.818357216161805012e-01
private let lg6 = 1.531383769920937332e-01
private let lg7 = 1.479819860511658591e-01
private let ln2Hi = 6.93147180369123816490e-01
private let ln2Lo = 1.90821492927058770002e-10

/// `(log a, 1/a)` for positive, normal, finite lanes, branch-free. The log is fdlibm's `e_log.c`
/// polynomial (error about 1 ulp; a few ulp here because `f/(2 + f)` and `1/a` share one
/// division). Reduction: `a = 2^k m` with `m ∈ [√½, √2)` by integer arithmetic on the bit
/// pattern; `k` becomes a Double with the 2^52 trick, so every step vectorizes.
/// Not for zero, subnormal, infinite or NaN lanes (the fit never produces them).
/// The specification of the C kernels' steps (`saliency_grimshaw_sums_f64`, which the fit calls):
/// `kernelSumsMatchTheSwiftReferenceBitForBit` checks they agree bit for bit.
@inline(__always)
func logAndReciprocal(_ a: SIMD2<Double>) -> (log: SIMD2<Double>, reciprocal: SIMD2<Double>) {
    let ix = unsafeBitCast(a, to: SIMD2<UInt64>.self)
    // tmp's exponent field is 1023 + k where a = 2^k m, m ∈ [√½, √2).
    let tmp = ix &+ 0x0009_5f61_9980_c433 // 0x3ff0… − bits(√½)
    let e = tmp &>> 52
    let mBits = ix &- ((e &- 1023) &<< 52)
    let m = unsafeBitCast(mBits, to: SIMD2<Double>.self)
    let kd = unsafeBitCast(e | 0x4330_0000_0000_0000, to: SIMD2<Double>.self) - (4_503_599_627_370_496.0 + 1023)
    let f = m - 1
    let g = 2 + f
    let d = 1 / (a * g)
    let s = f * a * d       // f/(2 + f)
    let reciprocal = g * d  // 1/a
    let z = s * s
    let w = z * z
    let t1 = w * (lg2 + w * (lg4 + w * lg6))
    let t2 = z * (lg1 + w * (lg3 + w * (lg5 + w * lg7)))
    let r = t2 + t1
    let hfsq = 0.5 * f * f
    return (kd * ln2Hi - ((hfsq - (s * (hfsq + r) + kd * ln2Lo)) - f), reciprocal)
}

private let lg1f: Float = 6.6666662693e-01
private let lg2f: Float = 4.0000972152e-01
private let lg3f: Float = 2.8498786688e-01
private let lg4f: Float = 2.4279078841e-01
private let ln2HiF: Float = 6.9313812256e-01
private let ln2LoF: Float = 9.0580006145e-06

/// Single-precision `(log a, 1/a)`, fdlibm `e_logf.c` polynomial, same reduction as the Double
/// version: the specification of `saliency_grimshaw_sums_f32` (the sign scan), checked bit for bit.
@inline(__always)
func logAndReciprocal(_ a: SIMD4<Float>) -> (log: SIMD4<Float>, reciprocal: SIMD4<Float>) {
    let ix = unsafeBitCast(a, to: SIMD4<UInt32>.self)
    let tmp = ix &+ 0x004a_fb0d // 0x3f800000 − bits(√½ as Float)
    let e = tmp &>> 23
    let m = unsafeBitCast(ix &- ((e &- 127) &<< 23), to: SIMD4<Float>.self)
    let kf = unsafeBitCast(e | 0x4b00_0000, to: SIMD4<Float>.self) - (8_388_608 + 127)
    let f = m - 1
    let g = 2 + f
    let d = 1 / (a * g)
    let s = f * a * d
    let reciprocal = g * d
    let z = s * s
    let w = z * z
    let t1 = w * (lg2f + w * lg4f)
    let t2 = z * (lg1f + w * lg3f)
    let r = t2 + t1
    let hfsq = 0.5 * f * f
    return (kf * ln2HiF - ((hfsq - (s * (hfsq + r) + kf * ln2LoF)) - f), reciprocal)
}
