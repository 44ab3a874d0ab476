import Foundation
import SaliencyCore
import Testing

@testable import SaliencyStream

@Suite("PredictionHeader")
struct PredictionHeaderTests {
    let sample = PredictionHeader(
        fingerprint: 0x0102_0304_0506_0708, producerID: 0x1112_1314_1516_1718, sequence: 0x2122_2324_2526_2728,
        timestampNanos: -2, predictedClass: 7, targetClass: -1, targetKind: .trueLabel,
        confidence: 0.5, sampleID: 0x3132_3334_3536_3738)

    @Test func goldenBytes() {
        // Written by hand from the table in docs/protocol.md §2.
        let expected: [UInt8] = [
            0x53, 0x41, 0x4C, 0x50,  // 0 magic "SALP"
            0x01, 0x00,  // 4 version 1
            0x03, 0x00,  // 6 flags: sample id + confidence
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  // 8 fingerprint
            0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11,  // 16 producer id
            0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21,  // 24 sequence
            0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,  // 32 timestamp -2
            0x07, 0x00, 0x00, 0x00,  // 40 predicted class 7
            0xFF, 0xFF, 0xFF, 0xFF,  // 44 target class -1
            0x01,  // 48 target kind: true label
            0x00, 0x00, 0x00,  // 49 reserved
            0x00, 0x00, 0x00, 0x3F,  // 52 confidence 0.5f
            0x38, 0x37, 0x36, 0x35, 0x34, 0x33, 0x32, 0x31,  // 56 sample id
        ]
        #expect(expected.count == 64)
        #expect(sample.encoded() == expected)
        let back = expected.withUnsafeBytes { try? PredictionHeader.decode($0) }
        #expect(back == sample)
    }

    @Test func roundTripWithoutOptionals() throws {
        var h = sample
        h.confidence = nil
        h.sampleID = nil
        let bytes = h.encoded()
        #expect(bytes[6] == 0 && bytes[7] == 0)
        #expect(bytes[52..<64].allSatisfy { $0 == 0 })
        let back = try bytes.withUnsafeBytes { (b) throws(SaliencyError) in try PredictionHeader.decode(b) }
        #expect(back == h)
    }

    @Test func decodesMisaligned() throws {
        var storage = [UInt8](repeating: 0, count: 65)
        storage.replaceSubrange(1..<65, with: sample.encoded())
        let back = try storage.withUnsafeBytes { (b) throws(SaliencyError) in
            try PredictionHeader.decode(UnsafeRawBufferPointer(rebasing: b[1...]))
        }
        #expect(back == sample)
    }

    func decodeError(_ bytes: [UInt8]) -> SaliencyError? {
        bytes.withUnsafeBytes { b in
            do throws(SaliencyError) { _ = try PredictionHeader.decode(b); return nil } catch { return error }
        }
    }

    @Test func malformedCases() {
        let good = sample.encoded()
        func mutate(_ f: (inout [UInt8]) -> Void) -> [UInt8] { var b = good; f(&b); return b }

        let short = decodeError(Array(good.prefix(12)))
        #expect(short?.code == .malformedFrame)
        #expect(short?.message == "header is 12 bytes, expected 64")
        #expect(decodeError([])?.message == "header is 0 bytes, expected 64")
        #expect(decodeError(good + [0])?.message == "header is 65 bytes, expected 64")

        let magic = decodeError(mutate { $0[3] = 0x51 })
        #expect(magic?.code == .malformedFrame)
        #expect(magic?.message.contains("bad magic 53 41 4C 51") == true)

        let v2 = decodeError(mutate { $0[4] = 2 })
        #expect(v2?.code == .unsupportedVersion)
        #expect(v2?.message.contains("version 2") == true)
        #expect(decodeError(mutate { $0[5] = 1 })?.code == .unsupportedVersion)  // 257
        #expect(decodeError(mutate { $0[4] = 0 })?.code == .unsupportedVersion)

        let flags = decodeError(mutate { $0[6] = 0x07 })
        #expect(flags?.code == .malformedFrame)
        #expect(flags?.message.contains("flags 0x7") == true)
        #expect(decodeError(mutate { $0[7] = 0x80 })?.code == .malformedFrame)

        let kind = decodeError(mutate { $0[48] = 2 })
        #expect(kind?.code == .malformedFrame)
        #expect(kind?.message.contains("target kind 2") == true)

        for i in 49...51 {
            let r = decodeError(mutate { $0[i] = 1 })
            #expect(r?.code == .malformedFrame)
            #expect(r?.message.contains("reserved") == true)
        }
    }

    @Test func flagsFollowOptionals() {
        var h = sample
        #expect(h.flags == 3)
        h.confidence = nil
        #expect(h.flags == 1)
        h.sampleID = nil
        h.confidence = 1
        #expect(h.flags == 2)
    }
}

@Suite("PayloadCheck")
struct PayloadCheckTests {
    func check(_ values: [Float], expected: Int? = nil, misalign: Bool = false) -> RowRejection? {
        var bytes = misalign ? [UInt8(0)] : []
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
        return bytes.withUnsafeBytes { b in
            let raw = UnsafeRawBufferPointer(rebasing: b[(misalign ? 1 : 0)...])
            let n = expected ?? values.count
            let verdict = PayloadCheck.validate(raw, expectedCount: n)
            // The fast C verdict agrees with the bit-pattern reason finder on every input.
            if n >= 0, raw.count == n * 4 { #expect((verdict == nil) == (PayloadCheck.reason(raw) == nil)) }
            return verdict
        }
    }

    /// Long rows exercise the 8-lane path and the tail: a bad value anywhere is found.
    @Test func longRowsInEveryPosition() {
        let good = (0..<45).map { Float($0) * 0.25 }
        #expect(check(good) == nil)
        #expect(check(good, misalign: true) == nil)
        for pos in [0, 7, 8, 31, 39, 40, 44] {
            var bad = good
            bad[pos] = .nan
            #expect(check(bad) == .nonFinite, "NaN at \(pos)")
            bad[pos] = -2
            #expect(check(bad, misalign: true) == .negative, "negative at \(pos)")
        }
    }

    @Test func accepts() {
        #expect(check([0, 1, 0.5, .greatestFiniteMagnitude, .leastNonzeroMagnitude, .leastNormalMagnitude]) == nil)
        #expect(check([]) == nil)
        #expect(check([-0.0, 0]) == nil)  // −0.0 is a zero magnitude: accepted
    }

    @Test func rejects() {
        #expect(check([1, .nan, 2]) == .nonFinite)
        #expect(check([1, Float(bitPattern: 0xFFC0_0001)]) == .nonFinite)  // negative NaN
        #expect(check([.infinity]) == .nonFinite)
        #expect(check([1, -.infinity]) == .nonFinite)
        #expect(check([1, -1e-30]) == .negative)
        #expect(check([-.leastNonzeroMagnitude]) == .negative)
        #expect(check([-3, .nan]) == .nonFinite)  // non-finite wins over negative
        #expect(check([1, 2], expected: 3) == .wrongWidth)
        #expect(check([1, 2], expected: 1) == .wrongWidth)
        #expect(check([1], expected: -1) == .wrongWidth)
        let odd: [UInt8] = [0, 0, 0, 0, 0]
        #expect(odd.withUnsafeBytes { PayloadCheck.validate($0, expectedCount: 1) } == .wrongWidth)
    }

    @Test func misalignedBuffers() {
        #expect(check([1, 2, 3], misalign: true) == nil)
        #expect(check([1, .nan, 3], misalign: true) == .nonFinite)
        #expect(check([1, -2, 3], misalign: true) == .negative)
    }

    @Test func floatViewOfMisalignedPayloads() {
        let values: [Float] = [0.25, 1, 2.5, 1e-3]
        var bytes = [UInt8](repeating: 0, count: 1)
        for v in values { withUnsafeBytes(of: v) { bytes += $0 } }
        bytes.withUnsafeBytes { b in
            let mis = UnsafeRawBufferPointer(rebasing: b[1...])
            #expect(Array(FloatPayload(mis)) == values)
        }
    }
}

@Suite("SchemaMessage")
struct SchemaMessageTests {
    func schema() throws -> ModelSchema {
        try ModelSchema(model: "fmnist-cnn", layers: [.init(name: "conv1", filters: 16), .init(name: "conv2", filters: 32, depth: 5)])
    }

    func err(_ json: String, topic: String? = nil) -> SaliencyError? {
        do throws(SaliencyError) { _ = try SchemaMessage.decode(Array(json.utf8), topicModel: topic); return nil } catch { return error }
    }

    @Test func roundTrip() throws {
        let s = try schema()
        let bytes = SchemaMessage.encode(s)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.contains("\"fingerprint\":\"\(SchemaMessage.hex(s.fingerprint))\""))
        #expect(SchemaMessage.hex(s.fingerprint).count == 16)
        #expect(SchemaMessage.hex(0xab) == "00000000000000ab")
        let back = try SchemaMessage.decode(bytes, topicModel: "fmnist-cnn")
        #expect(back == s)
        #expect(back.depth(ofLayer: 1) == 5)
    }

    @Test func fingerprintOptionalOnInput() throws {
        let s = try SchemaMessage.decode(Array(#"{"model":"m","layers":[{"name":"a","filters":2}],"extra":1}"#.utf8))
        #expect(s.filterCount == 2)
    }

    @Test func errors() throws {
        #expect(err("not json")?.code == .invalidSchema)
        #expect(err("not json")?.message.contains("not JSON") == true)
        #expect(err(#"{"model":"m"}"#)?.message.contains("missing \"layers\"") == true)
        #expect(err(#"{"model":"m","layers":[{"name":"a","filters":"2"}]}"#)?.message.contains("layers.[0].filters") == true)
        #expect(err(#"{"model":"m","layers":[]}"#)?.message.contains("no layers") == true)
        #expect(err(#"{"model":"a.b","layers":[{"name":"a","filters":2}]}"#)?.code == .invalidSchema)
        let fp = err(#"{"model":"m","layers":[{"name":"a","filters":2}],"fingerprint":"0000000000000000"}"#)
        #expect(fp?.message.contains("does not match") == true)
        #expect(err(#"{"model":"m","layers":[{"name":"a","filters":2}],"fingerprint":"+123456789abcdef"}"#)?.message.contains("16 hex digits") == true)
        #expect(err(#"{"model":"m","layers":[{"name":"a","filters":2}],"fingerprint":"12"}"#)?.message.contains("16 hex digits") == true)
        #expect(err(#"{"model":"m","layers":[{"name":"a","filters":2}]}"#, topic: "other")?.message.contains("topic schema.other") == true)
        let big = [UInt8](repeating: 0x20, count: SchemaMessage.maxBytes + 1)
        #expect(throws: SaliencyError.self) { try SchemaMessage.decode(big) }
    }

    @Test func fingerprintMatchesSpecExample() throws {
        // FNV-1a 64 over "m\0a\02\0", computed independently here.
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in Array("m".utf8) + [0] + Array("a".utf8) + [0] + Array("2".utf8) + [0] { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        let s = try ModelSchema(model: "m", layers: [.init(name: "a", filters: 2)])
        #expect(s.fingerprint == h)
    }
}

@Suite("Topic")
struct TopicTests {
    @Test func buildAndParse() {
        #expect(Topic.prediction("m1") == Array("pred.m1".utf8))
        #expect(Topic.schema("m1") == Array("schema.m1".utf8))
        #expect(Topic.alert(status: .firing, model: "m1", layer: "conv2") == Array("alert.firing.m1.conv2".utf8))
        #expect(Topic.parse(Topic.prediction("m1")) == .prediction(model: "m1"))
        #expect(Topic.parse(Topic.schema("a-long-model-name-over-15")) == .schema(model: "a-long-model-name-over-15"))
        #expect(Topic.parse(Array("pred.".utf8)) == .unknown)
        #expect(Topic.parse(Array("pred.a.b".utf8)) == .unknown)
        #expect(Topic.parse(Array("pred.a b".utf8)) == .unknown)
        #expect(Topic.parse(Array("alert.firing.m.l".utf8)) == .unknown)
        #expect(Topic.parse([]) == .unknown)
        #expect(Topic.parse(Array("pred.".utf8) + [0xFF]) == .unknown)
        #expect(Topic.parse(Array(("pred." + String(repeating: "x", count: 129)).utf8)) == .unknown)
    }
}
