import CKernels
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
/// Cost: one pass for the layer sum, one for the log-sum (a vectorized Cephes `logf` polynomial,
/// C kernel `saliency_layer_logres`, AVX2 or SSE2, bit-identical), one for the output; no
/// allocation (`apply` writes into the caller's buffer). A layer whose sums overflow Float (values near `Float.greatestFiniteMagnitude`)
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

    // MARK: - Kernels (Sources/CKernels/transform.c: AVX2 or SSE2, bit-identical)

    static func epsilon(_ mean: Double) -> Double { max(0.01 * mean, Double(Float.leastNormalMagnitude)) }

    static func logres(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        if n == 1 { dst[0] = 1; return }   // a one-filter layer is all common mode
        if saliency_layer_logres(src, dst, Int64(n)) != 0 { return }
        // Double path: the Float sums overflow (values near Float's largest) or a scale is not normal.
        var m = 0.0
        for k in 0..<n { m += Double(src[k]) }
        let ed = epsilon(m / Double(n))
        var ls = 0.0
        for k in 0..<n { ls += Double.log(Double(src[k]) + ed) }
        let mean = ls / Double(n)
        for k in 0..<n { dst[k] = Float(Double.exp(Double.log(Double(src[k]) + ed) - mean)) }
    }

    static func ratio(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        if saliency_layer_ratio(src, dst, Int64(n)) != 0 { return }
        var total = 0.0
        for k in 0..<n { total += Double(src[k]) }
        let m = total / Double(n)
        let inv = 1 / (m + epsilon(m))
        for k in 0..<n { dst[k] = Float(Double(src[k]) * inv) }
    }

    /// The instruction set the transforms run on this CPU ("avx2", "sse2" or "generic").
    public static var isa: String { String(cString: saliency_transform_isa()) }
}
