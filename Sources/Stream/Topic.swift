/// Topic frames (docs/protocol.md): `pred.<model>`, `schema.<model>`, `alert.<status>.<model>.<layer>`.
public enum Topic {
    /// Subscription prefix for every prediction.
    public static let predictionPrefix = "pred."
    /// Subscription prefix for every schema message.
    public static let schemaPrefix = "schema."
    /// Subscription prefix for every alert.
    public static let alertPrefix = "alert."

    /// Alert state carried in the alert topic.
    public enum AlertStatus: String, Sendable, Hashable, CaseIterable {
        case firing, resolved
    }

    /// `pred.<model>` as bytes.
    public static func prediction(_ model: String) -> [UInt8] { Array((predictionPrefix + model).utf8) }
    /// `schema.<model>` as bytes.
    public static func schema(_ model: String) -> [UInt8] { Array((schemaPrefix + model).utf8) }
    /// `alert.<status>.<model>.<layer>` as bytes; `layer` is a layer name or `_model`.
    public static func alert(status: AlertStatus, model: String, layer: String) -> [UInt8] {
        Array("\(alertPrefix)\(status.rawValue).\(model).\(layer)".utf8)
    }
    /// The layer part of model-level alerts.
    public static let modelLevelLayer = "_model"

    /// Whether `bytes` is a valid model name: 1–128 bytes of printable ASCII (0x21–0x7E) except `.`.
    public static func isValidModelName(_ bytes: some Collection<UInt8>) -> Bool {
        (1...128).contains(bytes.count) && bytes.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ".") }
    }

    /// Parses a received feed topic frame. Anything else, including a bad model name, is `.unknown`.
    /// Allocates only the model `String` (none for names ≤ 15 bytes).
    public static func parse(_ raw: UnsafeRawBufferPointer) -> ReceivedTopic {
        func rest(after prefix: StaticString) -> UnsafeRawBufferPointer? {
            let p = UnsafeRawBufferPointer(start: prefix.utf8Start, count: prefix.utf8CodeUnitCount)
            guard raw.count > p.count, raw.prefix(p.count).elementsEqual(p) else { return nil }
            return UnsafeRawBufferPointer(rebasing: raw[p.count...])
        }
        if let m = rest(after: "pred."), isValidModelName(m) { return .prediction(model: String(decoding: m, as: UTF8.self)) }
        if let m = rest(after: "schema."), isValidModelName(m) { return .schema(model: String(decoding: m, as: UTF8.self)) }
        return .unknown
    }

    /// Parses a topic held in a byte array.
    public static func parse(_ bytes: [UInt8]) -> ReceivedTopic { bytes.withUnsafeBytes { parse($0) } }
}

/// What a feed topic frame names.
public enum ReceivedTopic: Sendable, Hashable {
    case prediction(model: String)
    case schema(model: String)
    case unknown
}
