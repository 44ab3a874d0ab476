import Foundation
import SaliencyCore
import SaliencyStream
import Testing
@testable import SaliencyMonitor

/// A Taylor stream and a saliency stream of one network under one model name are two layouts
/// (docs/protocol.md §1): the second is a schema_conflict, its rows unknown_schema; status and
/// snapshots keep the quantity.
@Suite struct SchemaQuantityMonitorTests {
    static let layers: [ModelSchema.Layer] = [.init(name: "l0", filters: 8), .init(name: "l1", filters: 12), .init(name: "l2", filters: 4)]

    func sendRows(_ h: inout Harness, _ schema: ModelSchema, count: Int, producer: UInt64) {
        var header = PredictionHeader(fingerprint: schema.fingerprint, producerID: producer, sequence: 0, timestampNanos: 0, predictedClass: 0, targetClass: 0, targetKind: .trueLabel)
        for _ in 0..<count {
            header.sequence += 1
            let r = h.row()
            h.feed([Topic.prediction(schema.model), header.encoded(), r.withUnsafeBytes { Array($0) }])
        }
    }

    @Test func taylorBesideSaliencyUnderOneNameIsAConflictAndSnapshotsKeepTheQuantity() throws {
        var h = try Harness(seed: 3, calibration: 200)
        let taylor = try ModelSchema(model: "t", layers: Self.layers, quantity: "taylor")
        let plain = try ModelSchema(model: "t", layers: Self.layers)
        #expect(taylor.fingerprint != plain.fingerprint)
        h.feed([Topic.schema("t"), SchemaMessage.encode(taylor)])
        sendRows(&h, taylor, count: 20, producer: 11)
        #expect(h.core.engines[taylor.fingerprint]?.rows == 20)

        h.feed([Topic.schema("t"), SchemaMessage.encode(plain)])
        #expect(h.core.rejected[.schemaConflict] == 1)
        #expect(h.core.engines[plain.fingerprint] == nil)
        sendRows(&h, plain, count: 3, producer: 12)
        #expect(h.core.rejected[.unknownSchema] == 3)
        #expect(h.core.engines[taylor.fingerprint]?.rows == 20)

        let status = h.query(#"{"op":"status"}"#)
        let models = status["models"] as? [[String: Any]] ?? []
        #expect(models.count == 1)
        #expect(models.first?["model"] as? String == "t" && models.first?["quantity"] as? String == "taylor")
        #expect(models.first?["fingerprint"] as? String == SchemaMessage.hex(taylor.fingerprint))

        let restored = try SnapshotStore.decode(try SnapshotStore.encode(h.core), configuration: h.core.configuration)
        #expect(restored.engines.count == 1)
        #expect(restored.engines[0].schema.quantity == "taylor")
        #expect(restored.engines[0].schema == taylor && restored.engines[0].fingerprint == taylor.fingerprint)
    }

    @Test func plainSaliencyStatusSaysSaliency() throws {
        var h = try Harness(seed: 4, calibration: 200)
        h.sendSchema()
        for _ in 0..<5 { h.send(h.row()) }
        let models = h.query(#"{"op":"status"}"#)["models"] as? [[String: Any]] ?? []
        #expect(models.count == 1 && models.first?["quantity"] as? String == "saliency")
        let restored = try SnapshotStore.decode(try SnapshotStore.encode(h.core), configuration: h.core.configuration)
        #expect(restored.engines.first?.schema.quantity == nil && restored.engines.first?.fingerprint == h.schema.fingerprint)
    }
}
