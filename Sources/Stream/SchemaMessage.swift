import Foundation
import SaliencyCore

/// The schema message body (docs/protocol.md §1): JSON with `model`, `layers`, an optional
/// `quantity` (absent = saliency) and `fingerprint`.
public enum SchemaMessage {
    /// Largest schema body accepted, in bytes (1 MiB).
    public static let maxBytes = 1 << 20

    private struct Wire: Codable {
        var model: String
        var layers: [ModelSchema.Layer]
        /// Absent for plain saliency (the encoder omits nil, so such schemas keep their 0.1 bytes).
        var quantity: String?
        var fingerprint: String?
    }

    /// `fingerprint` as 16 lowercase hex digits.
    public static func hex(_ fingerprint: UInt64) -> String {
        let s = String(fingerprint, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    /// Encodes `schema` with its fingerprint. Keys sorted, so the output is deterministic.
    public static func encode(_ schema: ModelSchema) -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let wire = Wire(model: schema.model, layers: schema.layers, quantity: schema.quantity, fingerprint: hex(schema.fingerprint))
        // Encoding strings and integers cannot fail.
        return Array(try! enc.encode(wire))
    }

    /// Decodes and validates a schema body.
    ///
    /// - Parameter topicModel: the `<model>` of the `schema.<model>` topic, if known; it must match.
    /// - Throws: `.invalidSchema` when the JSON is bad, a field is missing or mistyped, the layout
    ///   breaks `ModelSchema`'s rules, the fingerprint is malformed or differs from the computed one,
    ///   or the body is larger than `maxBytes`. Unknown keys are ignored.
    /// - Parameter maxLayers: more layer objects than this are refused by a byte scan before the
    ///   JSON is decoded (decoding 30,000 one-filter layers cost the engine ~0.4 s).
    public static func decode(_ raw: UnsafeRawBufferPointer, topicModel: String? = nil, maxLayers: Int = ModelSchema.maxLayers) throws(SaliencyError) -> ModelSchema {
        guard raw.count <= maxBytes else {
            throw SaliencyError(.invalidSchema, "schema message is \(raw.count) bytes; the limit is \(maxBytes)")
        }
        let objects = nestedObjectCount(raw)
        guard objects <= maxLayers else {
            throw SaliencyError(.invalidSchema, "schema message holds \(objects) layer objects; the limit is \(maxLayers) layers")
        }
        let wire: Wire
        do {
            wire = try JSONDecoder().decode(Wire.self, from: Data(raw))
        } catch let e as DecodingError {
            throw SaliencyError(.invalidSchema, "schema message is not a valid schema: \(describe(e)); send {\"model\": \"name\", \"layers\": [{\"name\": \"conv1\", \"filters\": 16}], \"fingerprint\": \"16 hex digits\"}")
        } catch {
            throw SaliencyError(.invalidSchema, "schema message could not be read: \(error)")
        }
        let schema = try ModelSchema(model: wire.model, layers: wire.layers, quantity: wire.quantity)
        if let tm = topicModel, tm != schema.model {
            throw SaliencyError(.invalidSchema, "schema for model '\(schema.model)' arrived on topic schema.\(tm)")
        }
        if let fp = wire.fingerprint {
            guard fp.utf8.count == 16, fp.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x66) }),
                  let v = UInt64(fp, radix: 16) else {
                throw SaliencyError(.invalidSchema, "fingerprint '\(fp)' must be 16 hex digits")
            }
            guard v == schema.fingerprint else {
                throw SaliencyError(.invalidSchema, "fingerprint \(fp) does not match the layout: computed \(hex(schema.fingerprint)) (FNV-1a 64 of docs/protocol.md §1)")
            }
        }
        return schema
    }

    /// Objects nested inside the top-level object, counted outside strings (an upper bound on
    /// the layers a schema can hold). One pass, no allocation.
    static func nestedObjectCount(_ raw: UnsafeRawBufferPointer) -> Int { JSONShape.scan(raw).nestedObjects }

    /// Decodes a schema body held in a byte array.
    public static func decode(_ bytes: [UInt8], topicModel: String? = nil) throws(SaliencyError) -> ModelSchema {
        try bytes.withUnsafeBytes { b in Result { () throws(SaliencyError) in try decode(b, topicModel: topicModel) } }.get()
    }
}

/// Human text for a `DecodingError`: what was wrong and where.
func describe(_ e: DecodingError) -> String {
    func path(_ p: [any CodingKey]) -> String {
        p.isEmpty ? "the top level" : p.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }
    switch e {
    case .typeMismatch(let t, let c): return "\(path(c.codingPath)) should be \(t)"
    case .valueNotFound(let t, let c): return "\(path(c.codingPath)) is null, expected \(t)"
    case .keyNotFound(let k, let c): return "missing \"\(k.stringValue)\" at \(path(c.codingPath))"
    case .dataCorrupted(let c):
        return c.codingPath.isEmpty ? "not JSON (\(c.debugDescription))" : "\(path(c.codingPath)): \(c.debugDescription)"
    @unknown default: return "\(e)"
    }
}
