import Foundation
import SaliencyCore

extension SaliencyError.Code {
    /// The request's `op` is not one the daemon knows (docs/protocol.md §4).
    public static let unknownOp = SaliencyError.Code("unknown_op")
    /// The request is larger than `QueryRequest.maxBytes`.
    public static let tooLarge = SaliencyError.Code("too_large")
}

/// A parsed, validated query (docs/protocol.md §4).
public enum QueryRequest: Sendable, Hashable {
    /// Which scores `top` averages.
    public enum Window: Sendable, Hashable {
        /// The latest prediction only.
        case latest
        /// The mean score over the most recent `n` predictions.
        case recent(Int)
    }

    /// How `filter` names its filter.
    public enum FilterSelector: Sendable, Hashable {
        /// Global filter index (schema order).
        case index(Int)
        /// Channel `channel` of layer `layer`.
        case channel(layer: String, channel: Int)
    }

    case status
    case top(model: String, k: Int, by: ScoreKind, window: Window)
    case filter(model: String, selector: FilterSelector)
    case alerts(since: UInt64?, active: Bool)
    case snapshot
    case reset(model: String)

    /// Largest request accepted, in bytes (64 KiB); larger ones get `too_large`.
    public static let maxBytes = 64 * 1024
    /// Default and maximum `k` of `top`.
    public static let defaultK = 20, maxK = 1000
    /// Largest `window` count of `top`.
    public static let maxWindow = 1_000_000

    /// The ops, as sent in `"op"`.
    public static let ops = ["status", "top", "filter", "alerts", "snapshot", "reset"]

    /// Whether the op changes daemon state (`snapshot`, `reset`): the daemon may answer `forbidden`.
    public var isAdmin: Bool {
        switch self {
        case .snapshot, .reset: true
        default: false
        }
    }

    /// Parses a request body. Never traps, whatever the bytes.
    ///
    /// - Throws: `.tooLarge` (over `maxBytes`), `.badRequest` (not a JSON object, missing/mistyped
    ///   fields, out-of-range values, fields the op does not take), `.unknownOp`. Messages say what to send.
    public static func parse(_ raw: UnsafeRawBufferPointer) throws(SaliencyError) -> QueryRequest {
        guard raw.count <= maxBytes else {
            throw SaliencyError(.tooLarge, "request is \(raw.count) bytes; the limit is \(maxBytes)")
        }
        if let depth = excessiveNesting(raw, limit: maxNesting) {
            throw SaliencyError(.badRequest, "request nests arrays/objects \(depth) deep; the limit is \(maxNesting)")
        }
        let object: RequestObject
        do {
            object = try JSONDecoder().decode(RequestObject.self, from: Data(raw))
        } catch {
            throw SaliencyError(.badRequest, "request must be one JSON object like {\"op\": \"status\"}; \(error is DecodingError ? describe(error as! DecodingError) : "\(error)")")
        }
        return try object.request()
    }

    /// Deepest array/object nesting accepted (requests are flat; this bounds the JSON parser's recursion).
    public static let maxNesting = 16

    /// The depth reached if it exceeds `limit` (brackets outside strings), else nil.
    static func excessiveNesting(_ raw: UnsafeRawBufferPointer, limit: Int) -> Int? {
        let depth = JSONShape.scan(raw).maxDepth
        return depth > limit ? depth : nil
    }

    /// Parses a request held in a byte array.
    public static func parse(_ bytes: [UInt8]) throws(SaliencyError) -> QueryRequest {
        try bytes.withUnsafeBytes { b in Result { () throws(SaliencyError) in try parse(b) } }.get()
    }
}

/// One JSON value of a request's top-level object, typed shallowly (nested values are not kept).
enum RequestField {
    case null, bool(Bool), int(Int64), double(Double), string(String), compound

    var kind: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .int: "an integer"
        case .double: "a number"
        case .string: "a string"
        case .compound: "an array or object"
        }
    }
}

extension RequestField: Decodable {
    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null; return }
        if let b = try? c.decode(Bool.self) { self = .bool(b); return }
        if let i = try? c.decode(Int64.self) { self = .int(i); return }
        if let d = try? c.decode(Double.self) { self = .double(d); return }
        if let s = try? c.decode(String.self) { self = .string(s); return }
        self = .compound
    }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

struct RequestObject: Decodable {
    var fields: [String: RequestField] = [:]

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        for k in c.allKeys { fields[k.stringValue] = try c.decode(RequestField.self, forKey: k) }
    }

    private func bad(_ m: String) -> SaliencyError { SaliencyError(.badRequest, m) }

    func request() throws(SaliencyError) -> QueryRequest {
        guard let opField = fields["op"] else {
            throw bad("missing \"op\"; send {\"op\": \"status\"} or one of \(QueryRequest.ops.joined(separator: ", "))")
        }
        guard case .string(let op) = opField else {
            throw bad("\"op\" must be a string, got \(opField.kind); one of \(QueryRequest.ops.joined(separator: ", "))")
        }
        switch op {
        case "status":
            try only([])
            return .status
        case "snapshot":
            try only([])
            return .snapshot
        case "reset":
            try only(["model"])
            return .reset(model: try model())
        case "top":
            try only(["model", "k", "by", "window"])
            let m = try model()
            let k = try int("k", in: 1...QueryRequest.maxK) ?? QueryRequest.defaultK
            let by: ScoreKind
            switch fields["by"] {
            case nil, .null?: by = .pot
            case .string(let s)?:
                guard let v = ScoreKind(rawValue: s) else { throw bad("\"by\" must be one of \(ScoreKind.names), got \"\(s)\"") }
                by = v
            case let f?: throw bad("\"by\" must be one of \(ScoreKind.names), got \(f.kind)")
            }
            let window: QueryRequest.Window
            switch fields["window"] {
            case nil, .null?: window = .latest
            case .string("latest")?: window = .latest
            case .int?: window = .recent(try int("window", in: 1...QueryRequest.maxWindow)!)
            case let f?: throw bad("\"window\" must be \"latest\" or a count 1...\(QueryRequest.maxWindow) of recent predictions, got \(describeValue(f))")
            }
            return .top(model: m, k: k, by: by, window: window)
        case "filter":
            try only(["model", "filter", "layer", "channel"])
            let m = try model()
            let index = try int("filter", in: 0...Int(Int32.max))
            let layer = try string("layer")
            let channel = try int("channel", in: 0...Int(Int32.max))
            switch (index, layer, channel) {
            case (let i?, nil, nil): return .filter(model: m, selector: .index(i))
            case (nil, let l?, let c?): return .filter(model: m, selector: .channel(layer: l, channel: c))
            case (nil, nil, nil): throw bad("\"filter\" needs {\"filter\": global index} or {\"layer\": name, \"channel\": n}")
            case (nil, _, _): throw bad("\"layer\" and \"channel\" go together; send both")
            default: throw bad("send either \"filter\" or \"layer\"+\"channel\", not both")
            }
        case "alerts":
            try only(["since", "active"])
            let since = try int("since", in: 0...Int.max).map { UInt64($0) }
            let active: Bool
            switch fields["active"] {
            case nil, .null?: active = false
            case .bool(let b)?: active = b
            case let f?: throw bad("\"active\" must be true or false, got \(f.kind)")
            }
            return .alerts(since: since, active: active)
        default:
            throw SaliencyError(.unknownOp, "unknown op \"\(op.prefix(64))\"; send one of \(QueryRequest.ops.joined(separator: ", "))")
        }
    }

    private func describeValue(_ f: RequestField) -> String {
        if case .string(let s) = f { return "\"\(s.prefix(64))\"" }
        return f.kind
    }

    private func only(_ allowed: Set<String>) throws(SaliencyError) {
        let extra = fields.keys.filter { $0 != "op" && !allowed.contains($0) }.sorted()
        guard extra.isEmpty else {
            let takes = allowed.isEmpty ? "takes no arguments" : "takes \(allowed.sorted().map { "\"\($0)\"" }.joined(separator: ", "))"
            throw bad("unexpected field\(extra.count > 1 ? "s" : "") \(extra.prefix(8).map { "\"\($0.prefix(64))\"" }.joined(separator: ", ")); this op \(takes)")
        }
    }

    private func model() throws(SaliencyError) -> String {
        switch fields["model"] {
        case nil, .null?: throw bad("missing \"model\": the model name as in its schema")
        case .string(let s)?:
            guard Topic.isValidModelName(s.utf8) else {
                throw bad("\"model\" \"\(s.prefix(64))\" is not a model name (1–128 printable ASCII bytes, no spaces or dots)")
            }
            return s
        case let f?: throw bad("\"model\" must be a string, got \(f.kind)")
        }
    }

    private func string(_ key: String) throws(SaliencyError) -> String? {
        switch fields[key] {
        case nil, .null?: return nil
        case .string(let s)?:
            guard !s.isEmpty, s.utf8.count <= 256 else { throw bad("\"\(key)\" must be 1–256 bytes") }
            return s
        case let f?: throw bad("\"\(key)\" must be a string, got \(f.kind)")
        }
    }

    private func int(_ key: String, in range: ClosedRange<Int>) throws(SaliencyError) -> Int? {
        switch fields[key] {
        case nil, .null?: return nil
        case .int(let v)?:
            guard let i = Int(exactly: v), range.contains(i) else {
                throw bad("\"\(key)\" must be in \(range.lowerBound)...\(range.upperBound), got \(v)")
            }
            return i
        case let f?: throw bad("\"\(key)\" must be an integer in \(range.lowerBound)...\(range.upperBound), got \(describeValue(f))")
        }
    }
}

/// Error bodies the query socket sends back (the other replies are the types in Wire.swift).
public enum QueryReply {
    /// `{"error":{"code":…,"message":…},"ok":false}` (keys sorted).
    public static func error(code: SaliencyError.Code, message: String) -> [UInt8] {
        Wire.encode(ErrorReply(code: code, message: message))
    }

    /// The error reply for a `SaliencyError`.
    public static func error(_ e: SaliencyError) -> [UInt8] { error(code: e.code, message: e.message) }
}
