// libFuzzer target: schema message bodies (docs/protocol.md §1), as received on `schema.<model>`.
// Acceptable: a ModelSchema or a thrown SaliencyError. Also checks that an accepted schema
// survives encode → decode unchanged (the daemon re-encodes schemas into snapshots).
import SaliencyCore
import SaliencyStream

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let raw = UnsafeRawBufferPointer(start: data, count: size)
    guard let schema = try? SchemaMessage.decode(raw, topicModel: nil) else { return 0 }
    // The same body on its own topic must decode the same way.
    guard let again = try? SchemaMessage.decode(raw, topicModel: schema.model), again == schema else {
        fatalError("schema decodes without a topic but not on its own topic schema.\(schema.model)")
    }
    let encoded = SchemaMessage.encode(schema)
    let back: ModelSchema
    do { back = try SchemaMessage.decode(encoded, topicModel: schema.model) } catch {
        fatalError("re-encoded schema does not decode: \(error)")
    }
    precondition(back == schema && back.fingerprint == schema.fingerprint, "schema changed in an encode/decode round trip")
    return 0
}
