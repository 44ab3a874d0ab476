import Foundation
import Testing
@testable import SaliencyCore

/// The schema's optional `quantity` (docs/protocol.md §1): absent or "saliency" keeps every existing
/// fingerprint; another known quantity ("taylor") is mixed in after the layers; unknown ones are refused.
@Suite struct SchemaQuantityTests {
    let layers: [ModelSchema.Layer] = [.init(name: "a", filters: 3), .init(name: "b", filters: 5)]

    /// Computed independently with Python:
    /// python3 -c 'h=0xcbf29ce484222325
    /// for c in b"m\0a\x003\0b\x005\0": h^=c; h=(h*0x100000001b3)&(2**64-1)
    /// print(hex(h))'                                   → 0xeb102410212d9b2d
    static let plainFingerprint: UInt64 = 0xeb10_2410_212d_9b2d
    /// The same over b"m\0a\x003\0b\x005\0quantity\0taylor\0"  → 0x581b59bece2cfebd
    static let taylorFingerprint: UInt64 = 0x581b_59be_ce2c_febd

    @Test func absentOrSaliencyKeepsTheOldFingerprint() throws {
        let plain = try ModelSchema(model: "m", layers: layers)
        let explicit = try ModelSchema(model: "m", layers: layers, quantity: "saliency")
        #expect(plain.quantity == nil && explicit.quantity == nil)
        #expect(plain.quantityName == "saliency" && explicit.quantityName == "saliency")
        #expect(plain.fingerprint == Self.plainFingerprint)
        #expect(explicit.fingerprint == Self.plainFingerprint)
        #expect(plain == explicit)
        let decoded = try JSONDecoder().decode(ModelSchema.self, from: Data(#"{"model":"m","layers":[{"name":"a","filters":3},{"name":"b","filters":5}],"quantity":"saliency"}"#.utf8))
        #expect(decoded.quantity == nil && decoded.fingerprint == Self.plainFingerprint)
        let nullQuantity = try JSONDecoder().decode(ModelSchema.self, from: Data(#"{"model":"m","layers":[{"name":"a","filters":3},{"name":"b","filters":5}],"quantity":null}"#.utf8))
        #expect(nullQuantity.quantity == nil && nullQuantity.fingerprint == Self.plainFingerprint)
    }

    @Test func taylorChangesTheFingerprintToTheIndependentValue() throws {
        let taylor = try ModelSchema(model: "m", layers: layers, quantity: "taylor")
        #expect(taylor.quantity == "taylor" && taylor.quantityName == "taylor")
        #expect(taylor.fingerprint == Self.taylorFingerprint)
        #expect(taylor.fingerprint != Self.plainFingerprint)
        #expect(taylor != (try ModelSchema(model: "m", layers: layers)))
    }

    @Test func unknownOrMalformedQuantitiesAreRefused() throws {
        for bad in ["blame", "Taylor", "", "taylor ", "a\u{7}b", String(repeating: "x", count: 65), "taylör"] {
            do {
                _ = try ModelSchema(model: "m", layers: layers, quantity: bad)
                Issue.record("quantity \(bad.debugDescription) was accepted")
            } catch {
                #expect(error.code == .invalidSchema)
                #expect(error.message.contains("saliency, taylor"), "\(error.message)")
            }
        }
        do {
            _ = try ModelSchema(model: "m", layers: layers, quantity: "blame")
        } catch {
            #expect(error.message == "quantity 'blame' is not known to this daemon (saliency, taylor); upgrade saliencyd or publish saliency")
        }
        // Through Codable too (saliencyctl reads schema files this way), and a non-string is refused.
        #expect(throws: SaliencyError.self) {
            try JSONDecoder().decode(ModelSchema.self, from: Data(#"{"model":"m","layers":[{"name":"a","filters":3}],"quantity":"blame"}"#.utf8))
        }
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(ModelSchema.self, from: Data(#"{"model":"m","layers":[{"name":"a","filters":3}],"quantity":1}"#.utf8))
        }
    }

    @Test func codableRoundTrip() throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        for q in [nil, "taylor"] as [String?] {
            let s = try ModelSchema(model: "m", layers: layers, quantity: q)
            let bytes = try enc.encode(s)
            let text = String(decoding: bytes, as: UTF8.self)
            #expect(text.contains("quantity") == (q != nil), "\(text)")
            let back = try JSONDecoder().decode(ModelSchema.self, from: bytes)
            #expect(back == s && back.fingerprint == s.fingerprint && back.quantity == q)
        }
    }
}
