import SaliencyCore

/// Synthetic saliency rows: filter j draws `scale_j · exp(0.6 · N(0,1))` with `scale_j ~ U(0.5, 1.5)`,
/// exactly the family of `saliencyctl bench` (Sources/saliencyctl/Offline.swift, seed → SplitMix64).
/// A pool of `poolRows` rows is generated once and cycled, so nothing is generated (or allocated)
/// inside a timed loop.
public final class RowPool: @unchecked Sendable {
    // Isolation: immutable after init; only read through `row(_:)`.
    public let filters: Int
    public let poolRows: Int
    public let storage: UnsafeMutableBufferPointer<Float>

    public init(filters: Int, poolRows: Int = 64, seed: UInt64 = 1) {
        self.filters = filters
        self.poolRows = poolRows
        storage = .allocate(capacity: filters * poolRows)
        var rng = SplitMix64(seed: seed)
        let scales = (0..<filters).map { _ in Float(0.5 + rng.uniform()) }
        for r in 0..<poolRows {
            for j in 0..<filters { storage[r * filters + j] = scales[j] * Float(Self.exp(0.6 * rng.normal())) }
        }
    }

    /// Wraps existing C-order rows (e.g. read from a .npy file); the pool owns a copy.
    public init(filters: Int, values: [Float]) {
        precondition(filters > 0 && values.count % filters == 0)
        self.filters = filters
        self.poolRows = values.count / filters
        storage = .allocate(capacity: values.count)
        _ = storage.initialize(from: values)
    }

    deinit { storage.deallocate() }

    /// Row `i mod poolRows`.
    @inline(__always)
    public func row(_ i: Int) -> UnsafeBufferPointer<Float> {
        let r = i % poolRows
        return UnsafeBufferPointer(rebasing: UnsafeBufferPointer(storage)[(r * filters)..<((r + 1) * filters)])
    }

    static func exp(_ x: Double) -> Double {
        #if canImport(Glibc)
        return Glibc.exp(x)
        #else
        return Darwin.exp(x)
        #endif
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Monotonic nanoseconds (no Foundation, no allocation).
@inline(__always)
public func nowNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Per-thread CPU nanoseconds: robust against other processes on a loaded machine.
@inline(__always)
public func threadCPUNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
