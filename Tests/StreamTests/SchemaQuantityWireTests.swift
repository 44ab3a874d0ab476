import Foundation
import SaliencyCore
import SaliencyStream
import Testing

/// The schema message's optional `quantity` key (docs/protocol.md §1) on the wire.
@Suite("SchemaMessage quantity")
struct SchemaQuantityWireTests {
    func decode(_ s: String) throws(SaliencyError) -> ModelSchema { try SchemaMessage.decode(Array(s.utf8)) }

    @Test func saliencyBytesAreUnchanged() throws {
        let s = try ModelSchema(model: "m", layers: [.init(name: "a", filters: 3), .init(name: "b", filters: 5)], quantity: "saliency")
        #expect(String(decoding: SchemaMessage.encode(s), as: UTF8.self)
            == #"{"fingerprint":"eb102410212d9b2d","layers":[{"filters":3,"name":"a"},{"filters":5,"name":"b"}],"model":"m"}"#)
    }

    @Test func taylorRoundTripsWithItsFingerprint() throws {
        let s = try ModelSchema(model: "m", layers: [.init(name: "a", filters: 3), .init(name: "b", filters: 5)], quantity: "taylor")
        let text = String(decoding: SchemaMessage.encode(s), as: UTF8.self)
        // 0x581b59bece2cfebd: FNV-1a 64 of b"m\0a\x003\0b\x005\0quantity\0taylor\0" (Tests/CoreTests/SchemaQuantityTests.swift).
        #expect(text == #"{"fingerprint":"581b59bece2cfebd","layers":[{"filters":3,"name":"a"},{"filters":5,"name":"b"}],"model":"m","quantity":"taylor"}"#)
        let back = try SchemaMessage.decode(Array(text.utf8))
        #expect(back == s && back.quantity == "taylor" && back.fingerprint == 0x581b_59be_ce2c_febd)
    }

    @Test func theFingerprintMustCoverTheQuantity() throws {
        // A Taylor schema carrying the saliency fingerprint (a producer that does not mix the quantity) is refused.
        do {
            _ = try decode(#"{"model":"m","layers":[{"name":"a","filters":3},{"name":"b","filters":5}],"quantity":"taylor","fingerprint":"eb102410212d9b2d"}"#)
            Issue.record("accepted a taylor schema with the saliency fingerprint")
        } catch {
            #expect(error.code == .invalidSchema && error.message.contains("computed 581b59bece2cfebd"), "\(error.message)")
        }
        let ok = try decode(#"{"model":"m","layers":[{"name":"a","filters":3},{"name":"b","filters":5}],"quantity":"taylor","fingerprint":"581b59bece2cfebd"}"#)
        #expect(ok.quantity == "taylor")
        let explicit = try decode(#"{"model":"m","layers":[{"name":"a","filters":3},{"name":"b","filters":5}],"quantity":"saliency","fingerprint":"eb102410212d9b2d"}"#)
        #expect(explicit.quantity == nil)
    }

    @Test func unknownQuantityIsInvalidSchema() {
        for body in [#"{"model":"m","layers":[{"name":"a","filters":3}],"quantity":"blame"}"#,
                     #"{"model":"m","layers":[{"name":"a","filters":3}],"quantity":7}"#,
                     #"{"model":"m","layers":[{"name":"a","filters":3}],"quantity":""}"#] {
            do {
                _ = try decode(body)
                Issue.record("accepted \(body)")
            } catch {
                #expect(error.code == .invalidSchema)
            }
        }
        do { _ = try decode(#"{"model":"m","layers":[{"name":"a","filters":3}],"quantity":"blame"}"#) } catch {
            #expect(error.message.contains("quantity 'blame' is not known to this daemon (saliency, taylor)"), "\(error.message)")
        }
    }
}
