import Foundation
import Testing
import SaliencyCore
@testable import EVTOnline

// MARK: - Test support: seeded generators and the scipy fixture

/// Test draws on SaliencyCore's SplitMix64 (seeded, reproducible; `uniform()` in (0, 1), `normal()` Box–Muller).
extension SplitMix64 {
    mutating func exponential() -> Double { -Foundation.log(uniform()) }
    /// Student t with 3 degrees of freedom: Z / sqrt(χ²₃/3).
    mutating func studentT3() -> Double {
        let z = normal()
        var chi2 = 0.0
        for _ in 0..<3 { let a = normal(); chi2 += a * a }
        return z / Foundation.sqrt(chi2 / 3)
    }
    mutating func gpd(_ g: GPD) -> Double { g.quantile(survival: uniform()) }
}

struct Reference: Decodable {
    struct Fit: Decodable {
        var shape: Double, scale: Double, size: Int
        var peaks: [Double]
        var scipy_shape: Double, scipy_scale: Double, scipy_loglik: Double
    }
    struct Point: Decodable { var y: Double, sf: Double, logsf: Double, logpdf: Double }
    struct Quantile: Decodable { var p: Double, y: Double }
    struct ClosedForm: Decodable { var shape: Double, scale: Double, points: [Point], quantiles: [Quantile] }
    struct Quantiles: Decodable { var sample: [Double], levels: [Double], values: [Double] }
    struct Censored: Decodable {
        var shape: Double, size: Int
        var peaks: [Double], censored: [Double]
        var scipy_shape: Double, scipy_scale: Double, scipy_loglik: Double
    }
    var fits: [Fit]
    var censored: [Censored]
    var closed_form: [ClosedForm]
    var quantiles: Quantiles

    static let shared: Reference = {
        let url = Bundle.module.url(forResource: "gpd_reference", withExtension: "json", subdirectory: "Fixtures")!
        return try! JSONDecoder().decode(Reference.self, from: Data(contentsOf: url))
    }()
}

func relativeError(_ a: Double, _ b: Double) -> Double {
    if a == b { return 0 }
    return abs(a - b) / max(abs(a), abs(b))
}

// MARK: - GPD

@Suite struct GPDTests {
    @Test func closedFormMatchesScipy() {
        for set in Reference.shared.closed_form {
            let g = GPD(shape: set.shape, scale: set.scale)
            for p in set.points {
                #expect(relativeError(g.survival(excess: p.y), p.sf) <= 1e-10, "sf \(set.shape) \(set.scale) \(p.y)")
                #expect(relativeError(g.logSurvival(excess: p.y), p.logsf) <= 1e-10, "logsf \(set.shape) \(p.y)")
                #expect(relativeError(g.logDensity(excess: p.y), p.logpdf) <= 1e-10, "logpdf \(set.shape) \(p.y)")
            }
            for q in set.quantiles {
                #expect(relativeError(g.quantile(survival: q.p), q.y) <= 1e-10, "isf \(set.shape) \(set.scale) \(q.p)")
            }
        }
    }

    @Test func quantileInvertsSurvival() {
        for shape in [-0.4, -1e-13, 0, 1e-13, 0.3, 1.5] {
            let g = GPD(shape: shape, scale: 2)
            for p in [0.999, 0.5, 1e-3, 1e-9] {
                #expect(relativeError(g.survival(excess: g.quantile(survival: p)), p) <= 1e-12)
            }
            #expect(g.quantile(survival: 1) == 0)
            #expect(g.survival(excess: 0) == 1 && g.survival(excess: -1) == 1 && g.logSurvival(excess: -1) == 0)
        }
        #expect(GPD(shape: 0.2, scale: 1).quantile(survival: 0) == .infinity)
        #expect(GPD(shape: -0.25, scale: 1).quantile(survival: 0) == 4)
        #expect(GPD(shape: -0.25, scale: 1).endpoint == 4)
        #expect(GPD(shape: 0, scale: 1).endpoint == nil && GPD(shape: 0.1, scale: 1).endpoint == nil)
    }

    /// Defect 2 of docs/method.md §4: the γ = 0 log-likelihood is −k log σ − Σy/σ (negative sign).
    @Test func exponentialLogLikelihoodHasTheRightSign() {
        let y: [Double] = [0.5, 1, 2, 3.5]
        let g = GPD(shape: 0, scale: 2)
        let ll = y.withUnsafeBufferPointer { g.logLikelihood($0) }
        let expected = -4 * Foundation.log(2.0) - 7.0 / 2
        #expect(abs(ll - expected) <= 1e-14)
        #expect(ll == y.map { g.logDensity(excess: $0) }.reduce(0, +))
        // Continuous in γ at 0 from both sides.
        for s in [-1e-7, 1e-7] {
            let near = y.withUnsafeBufferPointer { GPD(shape: s, scale: 2).logLikelihood($0) }
            #expect(abs(near - ll) <= 1e-5)
        }
        // A larger excess is less likely: the likelihood must fall, not rise.
        let larger = [0.5, 1, 2, 35.0].withUnsafeBufferPointer { g.logLikelihood($0) }
        #expect(larger < ll)
    }

    /// Defect 3 of docs/method.md §4: beyond the endpoint of a γ < 0 tail the probability is 0 and
    /// the score +∞ (ranks first), never NaN.
    @Test func beyondTheEndpointIsProbabilityZeroNotNaN() {
        let g = GPD(shape: -0.5, scale: 1) // endpoint 2
        for y in [2.0, 2.0000001, 3, 1e300] {
            #expect(g.survival(excess: y) == 0)
            #expect(g.logSurvival(excess: y) == -.infinity)
            #expect(g.logDensity(excess: y) == -.infinity)
            let p = POT.tailProbability(value: 10 + y, threshold: 10, gpd: g, n: 1000, peaks: 100)
            #expect(p == 0)
            #expect(POT.score(p: p) == .infinity)
        }
        let inside = POT.score(p: POT.tailProbability(value: 11.999, threshold: 10, gpd: g, n: 1000, peaks: 100))
        #expect(inside.isFinite && inside < .infinity)
        #expect([1.0, 2.5].withUnsafeBufferPointer { g.logLikelihood($0) } == -.infinity)
    }

    @Test func extremeThresholdHasTailProbabilityQ() {
        for shape in [-0.3, -1e-13, 0, 1e-13, 0.2, 0.9] {
            let g = GPD(shape: shape, scale: 0.7)
            let (t, n, nt, q) = (3.0, 5000.0, 100.0, 1e-4)
            let z = POT.extremeThreshold(threshold: t, gpd: g, q: q, n: n, peaks: nt)
            #expect(z > t)
            let p = POT.tailProbability(value: z, threshold: t, gpd: g, n: n, peaks: nt)
            #expect(relativeError(p, q) <= 1e-12, "shape \(shape)")
        }
        // γ = 0 formula, literally.
        let z0 = POT.extremeThreshold(threshold: 1, gpd: GPD(shape: 0, scale: 2), q: 1e-3, n: 1000, peaks: 50)
        #expect(abs(z0 - (1 - 2 * Foundation.log(1e-3 * 1000 / 50))) <= 1e-14)
        #expect(POT.score(p: 1) == 0 && POT.score(p: 1e-3) == 3)
    }

    @Test func linearQuantileMatchesNumpy() {
        let ref = Reference.shared.quantiles
        let sorted = ref.sample.sorted()
        for (level, value) in zip(ref.levels, ref.values) {
            let q = sorted.withUnsafeBufferPointer { POT.linearQuantile(sorted: $0, level: level) }
            #expect(relativeError(q, value) <= 1e-15, "level \(level)")
        }
        #expect([5.0].withUnsafeBufferPointer { POT.linearQuantile(sorted: $0, level: 0.9) } == 5)
        #expect(abs([1.0, 2, 3, 4, 5].withUnsafeBufferPointer { POT.linearQuantile(sorted: $0, level: 0.9) } - 4.6) <= 1e-12)
    }
}
