import RealModule
import SaliencyCore

/// A common-mode-free row transform (docs/statistics.md, "Common-mode-free scorers"): maps a
/// saliency row `s` (K values ≥ 0, filters grouped in contiguous layers) to a positive row `y` of
/// the same width from which every per-row, per-layer factor has cancelled. The FilterBank then
/// models `y` exactly as it models raw saliency (upper tail, lower tail, z-score).
///
/// For each layer l (filters `offsets[l]..<offsets[l+1]`, `n_l` of them) and each row:
/// - `m = mean_l(s)`, `ε = max(0.01·m, Float.leastNormalMagnitude)` (per row: no calibration
///   parameter, and `c·s` gives `c·ε`, so the transform is exactly invariant to `s → c·s` on a layer);
/// - `layerLogres`: `y_i = (s_i + ε)/G`, `G = exp(mean_l log(s_j + ε))` the geometric mean, so
///   `log y_i = log(s_i + ε) − mean_l log(s_j + ε)` is the per-layer log-residual; `y` lies in
///   `[1/(100·n_l + 1), 100·n_l + 1]`;
/// - `layerRatio`: `y_i = s_i/(m + ε)` (`= s_i/(1.01·m)`; all 0 when the layer is all 0).
///
/// Cost: one pass for the layer sums (the log-sum uses a vectorized Cephes-style `log`, |error|
/// < 2e-7 absolute on the mean), one pass for the output; no allocation (`apply` writes into the
/// caller's buffer). A layer whose sums overflow Float (values near `Float.greatestFiniteMagnitude`)
/// is redone in Double, so any finite non-negative row gives a finite positive (logres) or
/// non-negative (ratio) row.
public struct RowTransform: Sendable {
    public let kind: RowTransformKind
    /// Layer boundaries: `offsets[l]` is layer l's first filter, `offsets.last` the width K.
    public let offsets: [Int]
    public var width: Int { offsets.last ?? 0 }

    /// - Precondition: `offsets` starts at 0 and is strictly increasing.
    public init(kind: RowTransformKind, offsets: [Int]) {
        precondition(offsets.first == 0 && zip(offsets, offsets.dropFirst()).allSatisfy { $0 < $1 }, "layer offsets must start at 0 and increase")
        self.kind = kind
        self.offsets = offsets
    }

    /// Writes the transform of `row` into `out` (both K wide; they may be the same buffer).
    /// `.none` copies. `row` must be finite and non-negative (a validated row).
    public func apply(_ row: UnsafeBufferPointer<Float>, into out: UnsafeMutableBufferPointer<Float>) {
        precondition(row.count == width && out.count == width)
        guard let src = row.baseAddress, let dst = out.baseAddress else { return }
        switch kind {
        case .none:
            if src != UnsafePointer(dst) { dst.update(from: src, count: width) }
        case .layerLogres:
            for l in 0..<(offsets.count - 1) { Self.logres(src + offsets[l], dst + offsets[l], offsets[l + 1] - offsets[l]) }
        case .layerRatio:
            for l in 0..<(offsets.count - 1) { Self.ratio(src + offsets[l], dst + offsets[l], offsets[l + 1] - offsets[l]) }
        }
    }

    /// The transformed row as a new array (queries, tools; not the hot path).
    public func applied(_ row: UnsafeBufferPointer<Float>) -> [Float] {
        [Float](unsafeUninitializedCapacity: width) { buf, n in
            apply(row, into: buf)
            n = width
        }
    }

    // MARK: - Kernels

    typealias V = SIMD8<Float>

    @inline(__always) static func load(_ p: UnsafePointer<Float>) -> V {
        UnsafeRawPointer(p).loadUnaligned(as: V.self)
    }
    @inline(__always) static func store(_ v: V, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
    }

    @inline(__always) static func sum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = V(repeating: 0), i = 0
        while i + 8 <= n { acc += load(p + i); i += 8 }
        var s = acc.sum()
        while i < n { s += p[i]; i += 1 }
        return s
    }

    static func epsilon(_ mean: Double) -> Double { max(0.01 * mean, Double(Float.leastNormalMagnitude)) }

    static func logres(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        if n == 1 { dst[0] = 1; return }   // a one-filter layer is all common mode
        let total = sum(src, n)
        let epsD = epsilon(Double(total) / Double(n))
        let eps = Float(epsD)
        // total + eps finite ⇒ every s + eps is finite (s ≤ total). The logs are taken of
        // (s + ε)/(m + ε), which lies in [1/101, n]: small logs keep the Float sum accurate.
        let scale = Float(1 / (Double(total) / Double(n) + epsD))
        if (total + eps).isFinite, scale.isNormal {
            var acc = V(repeating: 0), i = 0
            let e = V(repeating: eps), sv = V(repeating: scale)
            while i + 8 <= n { acc += fastLog((load(src + i) + e) * sv); i += 8 }
            var ls = Double(acc.sum())
            while i < n { ls += Double.log(Double((src[i] + eps) * scale)); i += 1 }
            let g = Float(Double(scale) * Double.exp(-ls / Double(n)))   // 1/G, in [1/(total + ε), 1/ε]
            if g.isNormal {
                let gv = V(repeating: g)
                i = 0
                while i + 8 <= n { store((load(src + i) + e) * gv, dst + i); i += 8 }
                while i < n { dst[i] = (src[i] + eps) * g; i += 1 }
                return
            }
        }
        // Double path: overflow of the Float sums or an extreme geometric mean.
        var m = 0.0
        for k in 0..<n { m += Double(src[k]) }
        let ed = epsilon(m / Double(n))
        var ls = 0.0
        for k in 0..<n { ls += Double.log(Double(src[k]) + ed) }
        let mean = ls / Double(n)
        for k in 0..<n { dst[k] = Float(Double.exp(Double.log(Double(src[k]) + ed) - mean)) }
    }

    static func ratio(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        var total = Double(sum(src, n))
        if !total.isFinite {
            total = 0
            for k in 0..<n { total += Double(src[k]) }
        }
        let m = total / Double(n)
        let inv = 1 / (m + epsilon(m))
        if Float(inv).isFinite {
            let f = Float(inv), fv = V(repeating: f)
            var i = 0
            while i + 8 <= n { store(load(src + i) * fv, dst + i); i += 8 }
            while i < n { dst[i] = src[i] * f; i += 1 }
        } else {
            for k in 0..<n { dst[k] = Float(Double(src[k]) * inv) }
        }
    }

    /// Natural log of 8 positive normal floats (Cephes `logf` polynomial on the mantissa reduced
    /// to [√½, √2)); absolute error below 2e-7 for normal inputs. Not for 0, subnormals, ∞ or NaN.
    @inline(__always) static func fastLog(_ x: V) -> V {
        let bits = SIMD8<Int32>(truncatingIfNeeded: x.bitPattern(as: UInt32.self))
        var e = V((bits &>> 23) &- 127)
        var m = V(bitPattern: SIMD8<UInt32>(truncatingIfNeeded: (bits & 0x007F_FFFF) | 0x3F80_0000))   // [1, 2)
        let big = m .> V(repeating: 1.41421356)
        m.replace(with: m * 0.5, where: big)
        e.replace(with: e + 1, where: big)
        let f = m - 1
        let z = f * f
        var y = V(repeating: 7.0376836292e-2)
        y = y * f - 1.1514610310e-1
        y = y * f + 1.1676998740e-1
        y = y * f - 1.2420140846e-1
        y = y * f + 1.4249322787e-1
        y = y * f - 1.6668057665e-1
        y = y * f + 2.0000714765e-1
        y = y * f - 2.4999993993e-1
        y = y * f + 3.3333331174e-1
        y = y * f * z
        y += e * -2.12194440e-4
        y += z * -0.5
        return f + y + e * 0.693359375
    }
}

private extension SIMD8 where Scalar == Float {
    func bitPattern(as _: UInt32.Type) -> SIMD8<UInt32> {
        unsafeBitCast(self, to: SIMD8<UInt32>.self)
    }
    init(bitPattern b: SIMD8<UInt32>) { self = unsafeBitCast(b, to: SIMD8<Float>.self) }
}
