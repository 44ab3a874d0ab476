import SaliencyCore

#if !_endian(little)
#error("the wire codecs read little-endian payloads in place; add byte swapping for big-endian hosts")
#endif

/// The 64-byte little-endian header of a prediction message (docs/protocol.md §2).
///
/// `flags` is derived from the optionals: bit 0 ⇔ `sampleID != nil`, bit 1 ⇔ `confidence != nil`.
/// Decoding is strict: every byte of the header has one meaning in version 1, so unknown flag
/// bits, non-zero reserved bytes and an unknown target kind are `malformed_frame`.
public struct PredictionHeader: Sendable, Hashable {
    /// Size of the encoded header in bytes.
    public static let size = 64
    /// `SALP` as a little-endian `UInt32` (bytes `53 41 4C 50`).
    public static let magic: UInt32 = 0x504C_4153
    /// The only version this build reads and writes.
    public static let currentVersion: UInt16 = 1

    /// Flag bit 0: `sampleID` present.
    public static let flagSampleID: UInt16 = 1 << 0
    /// Flag bit 1: `confidence` present.
    public static let flagConfidence: UInt16 = 1 << 1

    public var version: UInt16
    /// Schema fingerprint (`ModelSchema.fingerprint`).
    public var fingerprint: UInt64
    /// Random per producer process.
    public var producerID: UInt64
    /// Per producer, +1 per prediction.
    public var sequence: UInt64
    /// Nanoseconds since the Unix epoch.
    public var timestampNanos: Int64
    /// Predicted class, −1 unknown.
    public var predictedClass: Int32
    /// Class the loss was computed against, −1 unknown.
    public var targetClass: Int32
    public var targetKind: TargetKind
    /// Softmax maximum, if the producer sent it.
    public var confidence: Float?
    /// Producer's sample id, if it sent one.
    public var sampleID: UInt64?

    public init(version: UInt16 = PredictionHeader.currentVersion, fingerprint: UInt64, producerID: UInt64,
                sequence: UInt64, timestampNanos: Int64, predictedClass: Int32 = -1, targetClass: Int32 = -1,
                targetKind: TargetKind = .predicted, confidence: Float? = nil, sampleID: UInt64? = nil) {
        self.version = version
        self.fingerprint = fingerprint
        self.producerID = producerID
        self.sequence = sequence
        self.timestampNanos = timestampNanos
        self.predictedClass = predictedClass
        self.targetClass = targetClass
        self.targetKind = targetKind
        self.confidence = confidence
        self.sampleID = sampleID
    }

    /// The flags word as sent: bit 0 sample id, bit 1 confidence.
    public var flags: UInt16 {
        (sampleID != nil ? Self.flagSampleID : 0) | (confidence != nil ? Self.flagConfidence : 0)
    }

    /// Writes the 64 bytes into `buffer` (which must hold at least 64 bytes). No allocation.
    public func encode(into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= Self.size, "header needs \(Self.size) bytes, buffer has \(buffer.count)")
        buffer.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: version.littleEndian, toByteOffset: 4, as: UInt16.self)
        buffer.storeBytes(of: flags.littleEndian, toByteOffset: 6, as: UInt16.self)
        buffer.storeBytes(of: fingerprint.littleEndian, toByteOffset: 8, as: UInt64.self)
        buffer.storeBytes(of: producerID.littleEndian, toByteOffset: 16, as: UInt64.self)
        buffer.storeBytes(of: sequence.littleEndian, toByteOffset: 24, as: UInt64.self)
        buffer.storeBytes(of: timestampNanos.littleEndian, toByteOffset: 32, as: Int64.self)
        buffer.storeBytes(of: predictedClass.littleEndian, toByteOffset: 40, as: Int32.self)
        buffer.storeBytes(of: targetClass.littleEndian, toByteOffset: 44, as: Int32.self)
        buffer.storeBytes(of: targetKind.rawValue, toByteOffset: 48, as: UInt8.self)
        buffer.storeBytes(of: 0, toByteOffset: 49, as: UInt8.self)
        buffer.storeBytes(of: 0, toByteOffset: 50, as: UInt16.self)
        buffer.storeBytes(of: (confidence ?? 0).bitPattern.littleEndian, toByteOffset: 52, as: UInt32.self)
        buffer.storeBytes(of: (sampleID ?? 0).littleEndian, toByteOffset: 56, as: UInt64.self)
    }

    /// The 64 bytes as a new array.
    public func encoded() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.withUnsafeMutableBytes { encode(into: $0) }
        return out
    }

    /// Decodes a header frame in place (any alignment). No allocation unless it throws.
    ///
    /// - Throws: `.malformedFrame` (not 64 bytes, bad magic, unknown flag bits, non-zero reserved
    ///   bytes, unknown target kind) or `.unsupportedVersion`, with a message saying what was found.
    public static func decode(_ raw: UnsafeRawBufferPointer) throws(SaliencyError) -> PredictionHeader {
        guard raw.count == size else {
            throw SaliencyError(.malformedFrame, "header is \(raw.count) bytes, expected \(size)")
        }
        func u16(_ o: Int) -> UInt16 { UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
        func u32(_ o: Int) -> UInt32 { UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
        func u64(_ o: Int) -> UInt64 { UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }

        let m = u32(0)
        guard m == magic else {
            let hex = (0..<4).map { hexByte(raw[$0]) }.joined(separator: " ")
            throw SaliencyError(.malformedFrame, "bad magic \(hex), expected 53 41 4C 50 (\"SALP\")")
        }
        let version = u16(4)
        guard version == currentVersion else {
            throw SaliencyError(.unsupportedVersion, "header version \(version), this build reads version \(currentVersion) only")
        }
        let flags = u16(6)
        guard flags & ~(flagSampleID | flagConfidence) == 0 else {
            throw SaliencyError(.malformedFrame, "flags 0x\(String(flags, radix: 16)) set undefined bits; version 1 defines bit 0 (sample id) and bit 1 (confidence) only")
        }
        guard let kind = TargetKind(rawValue: raw[48]) else {
            throw SaliencyError(.malformedFrame, "target kind \(raw[48]) is unknown; expected 0 (predicted label) or 1 (true label)")
        }
        guard raw[49] == 0, raw[50] == 0, raw[51] == 0 else {
            throw SaliencyError(.malformedFrame, "reserved bytes 49...51 are \(hexByte(raw[49])) \(hexByte(raw[50])) \(hexByte(raw[51])), must be 00 00 00")
        }
        return PredictionHeader(
            version: version,
            fingerprint: u64(8),
            producerID: u64(16),
            sequence: u64(24),
            timestampNanos: Int64(bitPattern: u64(32)),
            predictedClass: Int32(bitPattern: u32(40)),
            targetClass: Int32(bitPattern: u32(44)),
            targetKind: kind,
            confidence: flags & flagConfidence != 0 ? Float(bitPattern: u32(52)) : nil,
            sampleID: flags & flagSampleID != 0 ? u64(56) : nil
        )
    }
}

func hexByte(_ b: UInt8) -> String {
    let d = Array("0123456789ABCDEF".utf8)
    return String(decoding: [d[Int(b >> 4)], d[Int(b & 15)]], as: UTF8.self)
}
