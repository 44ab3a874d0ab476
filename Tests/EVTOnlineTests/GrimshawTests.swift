import Foundation
import Testing
import SaliencyCore
@testable import EVTOnline
import CKernels

@Suite struct GrimshawTests {
    /// docs/method.md §4: shape within 0.01 of scipy's, or a log-likelihood no worse.
    @Test func agreesWithScipy() {
        var fitter = GrimshawFitter(capacity: 600)
        for ref in Reference.shared.fits {
            let fit = ref.peaks.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
            let tolerance = 1e-9 * abs(ref.scipy_loglik)
            #expect(abs(fit.gpd.shape - ref.scipy_shape) <= 0.01 || fit.logLikelihood >= ref.scipy_loglik - tolerance,
                    "γ=\(ref.shape) σ=\(ref.scale) n=\(ref.size): ours \(fit.gpd.shape) \(fit.logLikelihood), scipy \(ref.scipy_shape) \(ref.scipy_loglik)")
            #expect(fit.logLikelihood >= ref.scipy_loglik - tolerance)
            #expect(relativeError(fit.gpd.scale, ref.scipy_scale) <= 1e-3)
            #expect(fit.peakCount == ref.size)
            // The reported log-likelihood is the one GPD.logLikelihood computes.
            let direct = ref.peaks.withUnsafeBufferPointer { fit.gpd.logLikelihood($0) }
            #expect(relativeError(direct, fit.logLikelihood) <= 1e-9)
        }
    }

    @Test func floatInputAgreesWithScipy() {
        var fitter = GrimshawFitter(capacity: 600)
        for ref in Reference.shared.fits {
            let peaks = ref.peaks.map { Float($0) }
            let fit = peaks.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
            #expect(abs(fit.gpd.shape - ref.scipy_shape) <= 0.01, "γ=\(ref.shape) n=\(ref.size)")
        }
    }

    /// Defect 1 of docs/method.md §4: heavy tails must not come out as γ ≈ 0. The seed paper searched
    /// positive roots from 2(mean − min)/(mean·min), which lies above the root here.
    @Test func heavyTailIsFoundBelowTheSeedPapersIntervalStart() {
        var fitter = GrimshawFitter(capacity: 600)
        for ref in Reference.shared.fits where ref.shape == 0.5 && ref.size == 600 {
            let fit = ref.peaks.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
            #expect(fit.method == .grimshaw)
            #expect(fit.gpd.shape > 0.35, "heavy tail fitted as γ = \(fit.gpd.shape)")
            let mean = ref.peaks.reduce(0, +) / Double(ref.peaks.count)
            let minY = ref.peaks.min()!
            let paperStart = 2 * (mean - minY) / (mean * minY)
            let root = fit.gpd.shape / fit.gpd.scale
            #expect(root < paperStart, "root \(root) vs seed interval start \(paperStart)")
            // And an exponential fit (what the seed code returned) is much less likely.
            let expo = ref.peaks.withUnsafeBufferPointer { GPD(shape: 0, scale: mean).logLikelihood($0) }
            #expect(fit.logLikelihood > expo + 10)
        }
        var rng = SplitMix64(seed: 7)
        for _ in 0..<20 {
            let peaks = (0..<256).map { _ in rng.gpd(GPD(shape: 0.5, scale: 1)) }
            let fit = peaks.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
            #expect(fit.gpd.shape > 0.2 && fit.gpd.shape < 0.9)
        }
    }

    /// Defect 4 of docs/method.md §4: too few peaks is said, not silently fitted.
    @Test func tooFewPeaksIsInsufficientNotNaN() {
        var fitter = GrimshawFitter(capacity: 16)
        let none = [Double]().withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
        #expect(none.method == .insufficientPeaks && none.peakCount == 0)
        #expect(none.gpd.scale == 1 && none.gpd.shape == 0 && none.logLikelihood == 0)
        let few: [Double] = [0.5, 1.5, 1.0]
        let fit = few.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
        #expect(fit.method == .insufficientPeaks && fit.peakCount == 3)
        #expect(fit.gpd.shape == 0 && fit.gpd.scale == 1)
        #expect(fit.logLikelihood.isFinite)
        // minPeaks below 3 is raised to 3.
        #expect([1.0, 2].withUnsafeBufferPointer { fitter.fit($0, minPeaks: 1) }.method == .insufficientPeaks)
        #expect([1.0, 2, 4, 0.5].withUnsafeBufferPointer { fitter.fit($0, minPeaks: 1) }.method != .insufficientPeaks)
        let zeros = [Double](repeating: 0, count: 12).withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
        #expect(zeros.method == .insufficientPeaks && zeros.gpd.scale == 1)
    }

    @Test func degenerateSamplesGiveFiniteFits() {
        var fitter = GrimshawFitter(capacity: 64)
        let samples: [[Double]] = [
            [Double](repeating: 0.25, count: 20),                 // constant
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],                       // zeros and one peak
            (1...30).map { Double($0) * 1e-9 },                   // tiny scale
            (1...30).map { Double($0) * 1e9 },                    // huge scale
            [Double](repeating: 1, count: 40) + [1e6],            // one wild outlier
        ]
        for y in samples {
            let fit = y.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 3) }
            #expect(fit.gpd.shape.isFinite && fit.gpd.scale > 0 && fit.gpd.scale.isFinite, "\(y.prefix(3))")
            #expect(!fit.logLikelihood.isNaN)
        }
    }

    /// The modest production grid finds the same maximum as a 1000-point grid.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func coarseGridMatchesDenseGrid(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var fitter = GrimshawFitter(capacity: 256)
        var scratch = [Double](repeating: 0, count: GrimshawFitter.scratchCount(for: 256))
        for shape in [-0.5, -0.3, -0.1, 0, 0.1, 0.3, 0.6, 1.0] {
            for n in [30, 64, 256] {
                let y = (0..<n).map { _ in rng.gpd(GPD(shape: shape, scale: 1)) }
                let coarse = y.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
                for i in 0..<n { scratch[i] = y[i] }
                let dense = scratch.withUnsafeMutableBufferPointer {
                    GrimshawCore.fit(scratch: $0, count: n, minPeaks: 10, denseGrid: 1000)
                }
                #expect(coarse.logLikelihood >= dense.logLikelihood - 1e-9 * abs(dense.logLikelihood),
                        "γ=\(shape) n=\(n): coarse \(coarse.gpd.shape) \(coarse.logLikelihood), dense \(dense.gpd.shape) \(dense.logLikelihood)")
            }
        }
    }

    @Test func staticFitWithCallerScratchEqualsFitter() {
        var rng = SplitMix64(seed: 99)
        let y = (0..<100).map { _ in rng.gpd(GPD(shape: 0.2, scale: 3)) }
        var fitter = GrimshawFitter(capacity: 100)
        let a = y.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
        let b = y.withUnsafeBufferPointer { peaks in
            withUnsafeTemporaryAllocation(of: Double.self, capacity: GrimshawFitter.scratchCount(for: 100)) {
                GrimshawFitter.fit(peaks, minPeaks: 10, scratch: $0)
            }
        }
        #expect(a == b)
        #expect(GrimshawFitter.negativeGrid == 9 && GrimshawFitter.positiveGrid == 13)
    }

    @Test func fastLogIsAccurate() {
        var rng = SplitMix64(seed: 5)
        var worst = 0.0
        for _ in 0..<20_000 {
            let a = Foundation.exp(60 * (rng.uniform() - 0.5))
            let b = 1 + 1e-3 * rng.uniform()
            let (l, r) = logAndReciprocal(SIMD2(a, b))
            worst = max(worst, abs(l[0] - Foundation.log(a)) / max(1e-300, abs(Foundation.log(a))))
            worst = max(worst, abs(l[1] - Foundation.log(b)) / abs(Foundation.log(b)))
            #expect(relativeError(r[0], 1 / a) <= 1e-15 && relativeError(r[1], 1 / b) <= 1e-15)
        }
        #expect(worst <= 1e-14)
    }
}

@Suite struct CensoredGrimshawTests {
    /// Against scipy's `genpareto.fit(CensoredData(uncensored: y, right: c), floc=0)`.
    @Test func censoredFitAgreesWithScipy() {
        var fitter = GrimshawFitter(capacity: 1000)
        for ref in Reference.shared.censored {
            let fit = ref.peaks.withUnsafeBufferPointer { p in
                ref.censored.withUnsafeBufferPointer { fitter.fit(p, censored: $0, minPeaks: 10) }
            }
            let tolerance = 1e-9 * abs(ref.scipy_loglik)
            #expect(abs(fit.gpd.shape - ref.scipy_shape) <= 0.01 || fit.logLikelihood >= ref.scipy_loglik - tolerance,
                    "γ=\(ref.shape) n=\(ref.size): ours \(fit.gpd.shape) \(fit.logLikelihood), scipy \(ref.scipy_shape) \(ref.scipy_loglik)")
            #expect(fit.logLikelihood >= ref.scipy_loglik - tolerance)
            let direct = ref.peaks.withUnsafeBufferPointer { p in
                ref.censored.withUnsafeBufferPointer { fit.gpd.logLikelihood(p, censored: $0) }
            }
            #expect(relativeError(direct, fit.logLikelihood) <= 1e-9)
        }
    }

    /// With no censored values the censored fit is the plain fit, bit for bit.
    @Test func emptyCensoringIsThePlainFit() {
        var rng = SplitMix64(seed: 21)
        var fitter = GrimshawFitter(capacity: 300)
        for shape in [-0.3, 0, 0.4] {
            let y = (0..<200).map { _ in rng.gpd(GPD(shape: shape, scale: 1)) }
            let plain = y.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
            let censored = y.withUnsafeBufferPointer { p in [Double]().withUnsafeBufferPointer { fitter.fit(p, censored: $0, minPeaks: 10) } }
            #expect(plain == censored)
        }
    }

    /// The censored fit is a maximum of the censored likelihood Σ log f(y) + Σ log S(c), and
    /// reports that likelihood; censoring the top values at a point recovers the shape.
    @Test(arguments: [-0.2, 0.0, 0.3])
    func censoredFitMaximizesTheCensoredLikelihood(shape: Double) {
        var rng = SplitMix64(seed: 40 + UInt64(shape * 10 + 5))
        let g = GPD(shape: shape, scale: 1)
        let c0 = g.quantile(survival: 0.05)
        let all = (0..<2000).map { _ in rng.gpd(g) }
        let y = all.filter { $0 <= c0 }
        let c = [Double](repeating: c0, count: all.count - y.count)
        var fitter = GrimshawFitter(capacity: 2000)
        let fit = y.withUnsafeBufferPointer { p in c.withUnsafeBufferPointer { fitter.fit(p, censored: $0, minPeaks: 10) } }
        #expect(fit.censoredCount == c.count && fit.peakCount == y.count)
        func ll(_ s: Double, _ sc: Double) -> Double {
            y.withUnsafeBufferPointer { p in c.withUnsafeBufferPointer { GPD(shape: s, scale: sc).logLikelihood(p, censored: $0) } }
        }
        let best = ll(fit.gpd.shape, fit.gpd.scale)
        #expect(relativeError(best, fit.logLikelihood) <= 1e-9)
        for ds in [-0.01, 0.01] { for f in [0.99, 1.01] {
            #expect(ll(fit.gpd.shape + ds, fit.gpd.scale * f) <= best)
        } }
        #expect(abs(fit.gpd.shape - shape) <= 0.15, "censored fit γ \(fit.gpd.shape) for true \(shape)")
        // Dropping the censored values instead (truncation) biases the shape down.
        let truncated = y.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 10) }
        #expect(truncated.gpd.shape < fit.gpd.shape)
    }
}

@Suite struct ScanPrecisionTests {
    /// Wherever the single-precision scan claims a sign (|w| above its error bound), the
    /// double-precision w has that sign.
    @Test func floatScanSignsAreExactOutsideTheirErrorBound() {
        var rng = SplitMix64(seed: 77)
        for shape in [-0.4, -0.1, 0, 0.2, 0.7] {
            for n in [16, 100, 256] {
                var y = (0..<n).map { _ in rng.gpd(GPD(shape: shape, scale: 0.01)) }
                let mean = y.reduce(0, +) / Double(n), maxY = y.max()!
                let padded = GrimshawCore.paddedCount8(n)
                var yf = y.map { Float($0 / mean) } + [Float](repeating: 0, count: padded - n)
                y += [Double](repeating: 0, count: GrimshawCore.paddedCount(n) - n)
                y.withUnsafeMutableBufferPointer { yb in
                    yf.withUnsafeMutableBufferPointer { fb in
                        let exact = GrimshawCore.Evaluator(y: yb.baseAddress!, padded: yb.count, k: Double(n))
                        let scan = GrimshawCore.FloatScanner(y: fb.baseAddress!, padded: padded, censored: fb.baseAddress!,
                                                             censoredPadded: 0, k: Float(n), kernel: FilterBank.Kernels.best.table.grimshaw_sums_f32)
                        var xs = (1..<200).map { -(Double($0) / 200) / maxY }
                        xs += (0..<200).map { Foundation.pow(10, -4 + 8 * Double($0) / 200) / mean }
                        for x in xs {
                            let f = scan.evaluate(xi: x * mean)
                            let e = exact.evaluate(x)
                            if abs(f.w) > f.errorBound {
                                #expect((f.w > 0) == (e.w > 0), "γ=\(shape) n=\(n) x=\(x): float \(f.w) ± \(f.errorBound), double \(e.w)")
                            }
                        }
                    }
                }
            }
        }
    }

    @Test func floatLogIsAccurateEnoughForTheBound() {
        var rng = SplitMix64(seed: 6)
        for _ in 0..<10_000 {
            let a = Float(Foundation.exp(30 * (rng.uniform() - 0.5)))
            let (l, r) = logAndReciprocal(SIMD4<Float>(repeating: a))
            let truth = Foundation.log(Double(a))
            #expect(abs(Double(l[0]) - truth) <= 3e-7 * max(1, abs(truth)))
            #expect(relativeError(Double(r[0]), 1 / Double(a)) <= 5e-7)
        }
    }
}

@Suite struct GrimshawPreconditionTests {
    @Test func floatCensoredFitEqualsDoubleCensoredFit() {
        var rng = SplitMix64(seed: 12)
        let y = (0..<120).map { _ in Float(rng.gpd(GPD(shape: 0.1, scale: 1))) }
        let c: [Float] = [4, 5]
        var fitter = GrimshawFitter(capacity: 128)
        let a = y.withUnsafeBufferPointer { p in c.withUnsafeBufferPointer { fitter.fit(p, censored: $0, minPeaks: 10) } }
        let yd = y.map(Double.init), cd = c.map(Double.init)
        let b = yd.withUnsafeBufferPointer { p in cd.withUnsafeBufferPointer { fitter.fit(p, censored: $0, minPeaks: 10) } }
        #expect(a == b && a.censoredCount == 2)
    }

    @Test func capacityOverflowTraps() async {
        await #expect(processExitsWith: .failure) {
            var fitter = GrimshawFitter(capacity: 4)
            let y: [Double] = [1, 2, 3, 4, 5]
            _ = y.withUnsafeBufferPointer { fitter.fit($0, minPeaks: 3) }
        }
    }

    /// The fit's inner sums run in CKernels (AVX2 or SSE2): both variants return the same bits,
    /// and those equal the Swift reference steps (`term`, `logAndReciprocal`) summed in the
    /// kernels' documented tree, element by element. Each variant is called through its own
    /// table (`FilterBank.Kernels.table`), side by side; the free function runs the best one.
    @Test func kernelSumsMatchTheSwiftReferenceBitForBit() {
        let tables = FilterBank.Kernels.allCases.map(\.table)
        var rng = SplitMix64(seed: 77)
        let n = 264   // multiple of 8
        let yd = (0..<n).map { _ in -log(rng.uniform()) * 2.5 }
        let yf = yd.map { Float($0 / 2.5) }
        for x in [-0.05, -1e-3, 1e-5, 0.2, 3.0, 40.0] {   // 1 + x·max y > 0 throughout
            // Double: partial sums by element index mod 4, combined as (S0 + S2) + (S1 + S3).
            var pl = [Double](repeating: 0, count: 4), pv = [Double](repeating: 0, count: 4)
            for i in stride(from: 0, to: n, by: 2) {
                let (l, v) = GrimshawCore.Evaluator.term(SIMD2(repeating: x), SIMD2(yd[i], yd[i + 1]))
                pl[i % 4] += l[0]; pl[i % 4 + 1] += l[1]; pv[i % 4] += v[0]; pv[i % 4 + 1] += v[1]
            }
            let refL = (pl[0] + pl[2]) + (pl[1] + pl[3]), refV = (pv[0] + pv[2]) + (pv[1] + pv[3])
            var got: [(Double, Double)] = []
            for table in tables {
                var l = 0.0, v = 0.0
                yd.withUnsafeBufferPointer { table.grimshaw_sums_f64!($0.baseAddress!, Int64(n), x, &l, &v) }
                got.append((l, v))
            }
            var l0 = 0.0, v0 = 0.0
            yd.withUnsafeBufferPointer { saliency_grimshaw_sums_f64($0.baseAddress!, Int64(n), x, &l0, &v0) }
            got.append((l0, v0))
            for (l, v) in got {
                #expect(l.bitPattern == refL.bitPattern && v.bitPattern == refV.bitPattern, "f64 x=\(x)")
            }
            // Float: partial sums by index mod 8, combined as ((S0+S4)+(S2+S6)) + ((S1+S5)+(S3+S7)).
            let xf = Float(x)
            var ql = [Float](repeating: 0, count: 8), qv = [Float](repeating: 0, count: 8)
            for i in stride(from: 0, to: n, by: 4) {
                let t = SIMD4<Float>(repeating: xf) * SIMD4(yf[i], yf[i + 1], yf[i + 2], yf[i + 3])
                let a = 1 + t
                let (g, r) = logAndReciprocal(a)
                let l = g + (t - (a - 1)) * r, v = t * r
                for j in 0..<4 { ql[i % 8 + j] += l[j]; qv[i % 8 + j] += v[j] }
            }
            func tree(_ p: [Float]) -> Float { ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7])) }
            let refLf = tree(ql), refVf = tree(qv)
            for table in tables {
                var l: Float = 0, v: Float = 0
                yf.withUnsafeBufferPointer { table.grimshaw_sums_f32!($0.baseAddress!, Int64(n), xf, &l, &v) }
                #expect(l.bitPattern == refLf.bitPattern && v.bitPattern == refVf.bitPattern, "f32 x=\(x) isa=\(String(cString: table.isa))")
            }
            var l: Float = 0, v: Float = 0
            yf.withUnsafeBufferPointer { saliency_grimshaw_sums_f32($0.baseAddress!, Int64(n), xf, &l, &v) }
            #expect(l.bitPattern == refLf.bitPattern && v.bitPattern == refVf.bitPattern, "f32 x=\(x) free function")
        }
    }
}

/// The fitter takes its kernel variant as a value, like the bank: baseline and best give the same bits.
@Suite struct GrimshawFitterKernelsTests {
    @Test func baselineAndBestFitsAreBitIdentical() {
        var rng = SplitMix64(seed: 11)
        for n in [12, 57, 256, 1000] {
            let peaks = (0..<n).map { _ in -Foundation.log(max(1e-12, rng.uniform())) * 0.7 }
            var a = GrimshawFitter(capacity: n, kernels: .best), b = GrimshawFitter(capacity: n, kernels: .baseline)
            let fa = peaks.withUnsafeBufferPointer { a.fit($0, minPeaks: 10) }
            let fb = peaks.withUnsafeBufferPointer { b.fit($0, minPeaks: 10) }
            #expect(fa.gpd.shape.bitPattern == fb.gpd.shape.bitPattern && fa.gpd.scale.bitPattern == fb.gpd.scale.bitPattern && fa.method == fb.method)
        }
    }
}
