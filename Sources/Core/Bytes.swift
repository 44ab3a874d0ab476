/// Little-endian binary writer/reader for snapshots. Pure; the reader never traps on bad input:
/// every read is bounds-checked and throws `SaliencyError(.corruptState)` naming what was short.
#if _endian(big)
#error("saliencyd's binary formats assume a little-endian host")
#endif

public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    public mutating func write<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
    public mutating func write(_ v: Double) { write(v.bitPattern) }
    public mutating func write(_ v: Float) { write(v.bitPattern) }
    public mutating func write(_ v: Bool) { write(UInt8(v ? 1 : 0)) }
    /// Raw memory of `count` values (host order = little-endian).
    public mutating func write<T: BitwiseCopyable>(raw p: UnsafePointer<T>, count: Int) {
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: p, count: count * MemoryLayout<T>.stride))
    }
    /// Length-prefixed (u64) blob.
    public mutating func write(blob: [UInt8]) {
        write(UInt64(blob.count))
        bytes.append(contentsOf: blob)
    }
    /// A length-prefixed (u64) blob written in place by `body`: no intermediate array, so a large
    /// state is copied once, into this writer.
    public mutating func writeBlob(_ body: (inout ByteWriter) -> Void) {
        let at = bytes.count
        write(UInt64(0))
        body(&self)
        overwrite(UInt64(bytes.count - at - 8), at: at)
    }
    /// Replaces the bytes of an integer written earlier at byte offset `at`.
    public mutating func overwrite<T: FixedWidthInteger>(_ v: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count, "overwrite out of range")
        withUnsafeBytes(of: v.littleEndian) { src in
            bytes.withUnsafeMutableBytes { dst in
                UnsafeMutableRawBufferPointer(rebasing: dst[offset..<(offset + src.count)]).copyMemory(from: src)
            }
        }
    }
    /// Bytes written so far.
    public var count: Int { bytes.count }
}

public struct ByteReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var offset = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }

    mutating func need(_ n: Int, _ what: String) throws(SaliencyError) {
        guard n >= 0, remaining >= n else {
            throw SaliencyError(.corruptState, "truncated: \(what) needs \(n) bytes at offset \(offset), \(remaining) left")
        }
    }

    public mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: String = "integer") throws(SaliencyError) -> T {
        try need(MemoryLayout<T>.size, what)
        var v: T = 0
        withUnsafeMutableBytes(of: &v) { dst in
            bytes.withUnsafeBytes { src in dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[offset..<(offset + MemoryLayout<T>.size)])) }
        }
        offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }
    public mutating func readDouble(_ what: String = "double") throws(SaliencyError) -> Double { Double(bitPattern: try read(UInt64.self, what)) }
    public mutating func readBool(_ what: String = "bool") throws(SaliencyError) -> Bool {
        let b = try read(UInt8.self, what)
        guard b <= 1 else { throw SaliencyError(.corruptState, "\(what): bad boolean \(b)") }
        return b == 1
    }
    /// Copies `count` raw values into `p`.
    public mutating func read<T: BitwiseCopyable>(raw p: UnsafeMutablePointer<T>, count: Int, _ what: String) throws(SaliencyError) {
        let n = count * MemoryLayout<T>.stride
        try need(n, what)
        bytes.withUnsafeBytes { src in
            UnsafeMutableRawPointer(p).copyMemory(from: src.baseAddress! + offset, byteCount: n)
        }
        offset += n
    }
    public mutating func readBlob(_ what: String, limit: Int = 1 << 34) throws(SaliencyError) -> [UInt8] {
        let n = try read(UInt64.self, what)
        guard n <= UInt64(limit), n <= UInt64(remaining) else {
            throw SaliencyError(.corruptState, "\(what): length \(n) exceeds the \(remaining) bytes left")
        }
        let out = Array(bytes[offset..<(offset + Int(n))])
        offset += Int(n)
        return out
    }
}

/// FNV-1a 64 over bytes (snapshot checksums, fingerprints).
public func fnv1a64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h ^= UInt64(b); h = h &* 0x0000_0100_0000_01b3 }
    return h
}
