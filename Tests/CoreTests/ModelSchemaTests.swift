import Testing
@testable import SaliencyCore

@Suite struct ModelSchemaTests {
    @Test func locateAndGlobalIndexRoundTrip() throws {
        let s = try ModelSchema(model: "m", layers: [.init(name: "a", filters: 3), .init(name: "b", filters: 5), .init(name: "c", filters: 1)])
        #expect(s.filterCount == 9)
        for j in 0..<9 {
            let (l, c) = s.locate(j)
            #expect(s.globalIndex(layer: l, channel: c) == j)
        }
        #expect(s.locate(0) == (0, 0))
        #expect(s.locate(3) == (1, 0))
        #expect(s.locate(8) == (2, 0))
    }

    @Test func rejectsBadSchemas() {
        #expect(throws: SaliencyError.self) { try ModelSchema(model: "m", layers: []) }
        #expect(throws: SaliencyError.self) { try ModelSchema(model: "m", layers: [.init(name: "a", filters: 0)]) }
        #expect(throws: SaliencyError.self) { try ModelSchema(model: "a.b", layers: [.init(name: "a", filters: 1)]) }
        #expect(throws: SaliencyError.self) { try ModelSchema(model: "m", layers: [.init(name: "a", filters: 1), .init(name: "a", filters: 2)]) }
    }

    /// The fingerprint is part of the wire protocol (docs/protocol.md §1); this value was computed
    /// independently with Python: FNV-1a 64 over b"m\0a\x003\0b\x005\0".
    @Test func fingerprintMatchesIndependentFNV1a() throws {
        let s = try ModelSchema(model: "m", layers: [.init(name: "a", filters: 3), .init(name: "b", filters: 5)])
        #expect(s.fingerprint == 0xeb102410212d9b2d)
    }
}

@Suite struct ByteWriterTests {
    /// A blob written in place has the bytes of the same blob written from an array, and
    /// `overwrite` patches an earlier integer without moving anything else.
    @Test func inPlaceBlobsAndPatches() {
        let payload: [UInt8] = (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        var a = ByteWriter()
        a.write(UInt32(7))
        a.write(blob: payload)
        a.write(UInt16(9))
        var b = ByteWriter(capacity: 16)
        b.write(UInt32(7))
        b.writeBlob { w in for byte in payload { w.write(byte) } }
        b.write(UInt16(9))
        #expect(a.bytes == b.bytes)
        b.overwrite(UInt32(0xDEAD_BEEF), at: 0)
        #expect(Array(b.bytes[0..<4]) == [0xEF, 0xBE, 0xAD, 0xDE])
        #expect(Array(b.bytes[4...]) == Array(a.bytes[4...]))
        var r = ByteReader(b.bytes)
        #expect((try? r.read(UInt32.self, "x")) == 0xDEAD_BEEF)
    }
}
