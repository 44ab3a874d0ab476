import Testing
import SaliencyCore
@testable import EVTOnline

@Suite struct WelfordTests {
    func twoPass(_ xs: ArraySlice<Double>) -> (mean: Double, variance: Double) {
        let mean = xs.reduce(0, +) / Double(xs.count)
        let ss = xs.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }
        return (mean, ss / Double(xs.count - 1))
    }

    @Test(arguments: [1, 2, 3, 4, 5] as [UInt64])
    func matchesTwoPassEvenWithALargeOffset(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        // Offset 1e6 with unit noise: Σx²/n − mean² would lose ~12 digits here.
        let xs = (0..<5000).map { _ in 1e6 + rng.normal() }
        var w = Welford()
        for x in xs { w.add(x) }
        let (mean, variance) = twoPass(xs[...])
        #expect(w.count == 5000)
        #expect(relativeError(w.mean, mean) <= 1e-14)
        #expect(relativeError(w.variance, variance) <= 1e-9)
    }

    @Test(arguments: [11, 12, 13] as [UInt64])
    func mergeEqualsSequential(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let xs = (0..<2000).map { _ in 3 + 2 * rng.exponential() }
        var all = Welford()
        for x in xs { all.add(x) }
        for split in [0, 1, 17, 1000, 1999, 2000] {
            var a = Welford(), b = Welford()
            for x in xs[..<split] { a.add(x) }
            for x in xs[split...] { b.add(x) }
            a.merge(b)
            #expect(a.count == all.count)
            #expect(relativeError(a.mean, all.mean) <= 1e-13)
            #expect(relativeError(a.variance, all.variance) <= 1e-12)
        }
    }

    @Test func degenerateCasesAreNotNaN() {
        var w = Welford()
        #expect(w.variance == 0 && w.mean == 0 && w.zScore(3) == 3)
        w.add(4)
        #expect(w.variance == 0 && w.zScore(6) == 2) // σ < 1e-14 → σ = 1
        for _ in 0..<10 { w.add(4) }
        #expect(w.standardDeviation == 0 && w.zScore(5) == 1)
        var v = Welford()
        for x in [1.0, 2, 3, 4] { v.add(x) }
        #expect(v.variance == 5.0 / 3)
        #expect(abs(v.zScore(4) - 1.5 / (5.0 / 3).squareRoot()) <= 1e-15)
        let restored = Welford(count: v.count, mean: v.mean, m2: v.m2)
        #expect(restored == v)
    }
}
