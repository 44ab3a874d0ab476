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
