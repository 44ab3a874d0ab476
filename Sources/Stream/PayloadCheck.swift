import CKernels
import SaliencyCore

/// Validation of a prediction payload: `K` little-endian float32 saliencies (docs/protocol.md §2).
///
/// Works on the bit patterns in one branch-free SIMD pass (8 values per step),
/// reads with `loadUnaligned` so any frame alignment is fine, and allocates nothing.
///
/// Rules, in order of precedence when a row breaks several:
/// 1. byte count ≠ 4·K → `.wrongWidth`;
/// 2. any exponent field all ones (NaN, +∞, −∞) → `.nonFinite`;
/// 3. any sign bit set on a value other than −0.0 → `.negative`.
///
/// **−0.0 is accepted** (it is a zero magnitude: `abs`/mean of tiny gradients can produce it and it
/// compares equal to 0). Subnormals are accepted.
public enum PayloadCheck {
    /// Returns why the payload must be rejected, or `nil` if every value is a finite float ≥ 0.
    /// O(K), no allocation.
    public static func validate(_ raw: UnsafeRawBufferPointer, expectedCount: Int) -> RowRejection? {
        guard expectedCount >= 0, raw.count == expectedCount &* 4 else { return .wrongWidth }
        // Fast verdict: one vector pass (CKernels, any alignment); only a bad row pays for the reason.
        guard let base = raw.baseAddress, saliency_row_has_invalid(base, Int64(expectedCount)) != 0 else { return nil }
        return reason(raw)
    }

    /// Why a row that failed the fast check is invalid (bit patterns: non-finite wins over negative).
    static func reason(_ raw: UnsafeRawBufferPointer) -> RowRejection? {
        // 8 lanes at a time (SIMD masks accumulate without branches), then the tail.
        let expBits = SIMD8<UInt32>(repeating: 0x7F80_0000), signOnly = SIMD8<UInt32>(repeating: 0x8000_0000)
        var nf = SIMDMask<SIMD8<Int32>>(repeating: false), ng = SIMDMask<SIMD8<Int32>>(repeating: false)
        var offset = 0
        let vectorEnd = raw.count & ~31
        while offset < vectorEnd {
            let v = raw.loadUnaligned(fromByteOffset: offset, as: SIMD8<UInt32>.self)
            nf = nf .| ((v & expBits) .== expBits)
            ng = ng .| (v .> signOnly)
            offset &+= 32
        }
        var nonFinite = any(nf)
        var negative = any(ng)
        while offset < raw.count {
            let bits = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
            if bits & 0x7F80_0000 == 0x7F80_0000 { nonFinite = true }
            if bits > 0x8000_0000 { negative = true }   // sign bit set and not exactly −0.0
            offset &+= 4
        }
        if nonFinite { return .nonFinite }
        if negative { return .negative }
        return nil
    }
}

/// A zero-copy, alignment-agnostic view of a payload as `Float`s (each element read with
/// `loadUnaligned`). Valid only as long as the underlying frame.
public struct FloatPayload: RandomAccessCollection {
    public let raw: UnsafeRawBufferPointer

    /// Wraps a payload whose byte count is a multiple of 4.
    public init(_ raw: UnsafeRawBufferPointer) {
        precondition(raw.count % 4 == 0, "payload of \(raw.count) bytes is not a whole number of float32")
        self.raw = raw
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { raw.count / 4 }

    @inlinable
    public subscript(i: Int) -> Float {
        precondition(i >= 0 && i < endIndex)
        return Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self)))
    }
}
