import Foundation
import SaliencyCore

// The wire contract of docs/protocol.md as typed values: what the daemon sends and what clients
// read are the same Swift types, encoded and decoded by `Wire` alone. The golden files in
// Tests/StreamTests/Fixtures/wire/ are the JSON docs/protocol.md shows; tests decode every one of
// them into these types and re-encode them byte for byte.

/// Why the daemon refused an input (the `reason` of `saliencyd_rejected_total` and of
/// `status.rejected`; docs/protocol.md §2, §4, docs/security.md).
public enum RejectReason: String, Sendable, Hashable, Codable, CaseIterable {
    case malformedFrame = "malformed_frame"
    case unsupportedVersion = "unsupported_version"
    case unknownSchema = "unknown_schema"
    case topicMismatch = "topic_mismatch"
    case wrongWidth = "wrong_width"
    case nonFinite = "non_finite"
    case negative = "negative"
    case invalidSchema = "invalid_schema"
    case overBudget = "over_budget"
    case tooManyModels = "too_many_models"
    case schemaConflict = "schema_conflict"
    case forbiddenSchema = "forbidden_schema"
    case badQuery = "bad_query"
    case forbiddenQuery = "forbidden_query"

    /// The reason for a payload that failed `PayloadCheck`.
    public init(_ r: RowRejection) {
        switch r {
        case .wrongWidth: self = .wrongWidth
        case .nonFinite: self = .nonFinite
        case .negative: self = .negative
        }
    }

    /// The reason for a prediction header that failed to decode (`PredictionHeader.decode`).
    public init(header error: SaliencyError) {
        self = error.code == .unsupportedVersion ? .unsupportedVersion : .malformedFrame
    }
}

/// The one JSON encoder and decoder of the protocol: keys sorted, `/` unescaped, and ±∞/NaN as
/// the strings `"inf"`, `"-inf"`, `"nan"` both ways (POT scores are +∞ beyond a tail's endpoint).
public enum Wire {
    public static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        // Every wire type is plain data (strings, numbers, arrays): encoding cannot fail.
        return Array(try! e.encode(value))
    }

    /// Decodes `T`; a malformed body is `bad_request` saying where.
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: some Collection<UInt8>) throws(SaliencyError) -> T {
        let d = JSONDecoder()
        d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        do { return try d.decode(T.self, from: Data(bytes)) } catch let e as DecodingError {
            throw SaliencyError(.badRequest, "not a valid \(T.self): \(describe(e))")
        } catch {
            throw SaliencyError(.badRequest, "not a valid \(T.self): \(error)")
        }
    }

    /// A reply body: the `T` it holds, or the daemon's error (`{"ok": false, "error": …}`) thrown
    /// as a `SaliencyError` with the daemon's code and message.
    public static func reply<T: Decodable>(_ type: T.Type, from bytes: some Collection<UInt8>) throws(SaliencyError) -> T {
        let head = try decode(ReplyHead.self, from: bytes)
        if !head.ok {
            throw SaliencyError(SaliencyError.Code(head.error?.code ?? "error"), head.error?.message ?? "the daemon answered ok: false without an error")
        }
        return try decode(T.self, from: bytes)
    }

    private struct ReplyHead: Decodable { var ok: Bool; var error: ErrorReply.Body? }
}

// MARK: - Requests

extension QueryRequest {
    /// The request as sent on the wire (`{"op": …}` with the op's fields; keys sorted).
    public var body: [UInt8] {
        var o = JSONWriter()
        o.open()
        switch self {
        case .status: o.key("op"); o.string("status")
        case .snapshot: o.key("op"); o.string("snapshot")
        case .reset(let m): o.key("model"); o.string(m); o.key("op"); o.string("reset")
        case .top(let m, let k, let by, let window):
            o.key("by"); o.string(by.rawValue); o.key("k"); o.int(k); o.key("model"); o.string(m); o.key("op"); o.string("top")
            if case .recent(let n) = window { o.key("window"); o.int(n) }
        case .filter(let m, .index(let i)):
            o.key("filter"); o.int(i); o.key("model"); o.string(m); o.key("op"); o.string("filter")
        case .filter(let m, .channel(let layer, let c)):
            o.key("channel"); o.int(c); o.key("layer"); o.string(layer); o.key("model"); o.string(m); o.key("op"); o.string("filter")
        case .alerts(let since, let active):
            if active { o.key("active"); o.raw("true") }
            o.key("op"); o.string("alerts")
            if let s = since { o.key("since"); o.raw(String(s)) }
        }
        o.close()
        return o.bytes
    }
}

// MARK: - Replies

/// `{"error": {"code": …, "message": …}, "ok": false}`.
public struct ErrorReply: Codable, Sendable, Hashable {
    public struct Body: Codable, Sendable, Hashable { public var code: String; public var message: String }
    public var ok = false
    public var error: Body
    public init(code: SaliencyError.Code, message: String) { error = Body(code: code.rawValue, message: message) }
}

/// `status`: the daemon, its models, producers, budgets and persistence health.
public struct StatusReply: Codable, Sendable, Hashable {
    public struct RuleInfo: Codable, Sendable, Hashable {
        public var window: Int; public var fire_count: Int; public var resolve_below: Int
        public init(window: Int, fire_count: Int, resolve_below: Int) { self.window = window; self.fire_count = fire_count; self.resolve_below = resolve_below }
    }
    /// The model-level shift rule (docs/alerting.md §4): `state` is "off" (disabled), "waiting"
    /// (the model is calibrating; cross-fit at its end), "burning_in" (`burn_in_seen` of
    /// `burn_in_total` null rows), or "armed" (calibrated: `source`, `row_threshold`, `null_rate`,
    /// `null_rows` as logged in "model-level shift rule calibrated").
    public struct ModelRule: Codable, Sendable, Hashable {
        public var state: String
        public var source: String?; public var row_threshold: Int?; public var null_rate: Double?; public var null_rows: Int?
        public var burn_in_seen: Int?; public var burn_in_total: Int?
        public init(state: String, source: String? = nil, row_threshold: Int? = nil, null_rate: Double? = nil, null_rows: Int? = nil,
                    burn_in_seen: Int? = nil, burn_in_total: Int? = nil) {
            self.state = state; self.source = source; self.row_threshold = row_threshold; self.null_rate = null_rate
            self.null_rows = null_rows; self.burn_in_seen = burn_in_seen; self.burn_in_total = burn_in_total
        }
    }
    public struct Model: Codable, Sendable, Hashable {
        public var model: String; public var fingerprint: String; public var filters: Int; public var layers: Int
        public var phase: String; public var calibration_seen: Int; public var calibration_total: Int
        public var rows: UInt64; public var rows_since_start: UInt64; public var rate_per_s: Double
        public var firing: Int; public var model_alert: Bool; public var refits: UInt64; public var due: Int
        public var alert_rule: RuleInfo; public var rejected_rows: [String: UInt64]
        /// Extreme exceedances of the (at most 32) layers with the most, and the sum of the rest.
        public var extremes_by_layer: [String: UInt64]
        public var extremes_other_layers: UInt64
        /// The most memory this model may claim (its charge against limits.max_total_bytes).
        public var max_bytes: Int
        /// Ring sampling stride m (every m-th peak enters a filter's ring; docs/statistics.md).
        public var peak_stride: Int
        /// Upper bound on rows between a filter becoming due and its refit (nil: idle refits only).
        public var max_refit_lag_rows: Int?
        /// What the model's rows hold: "saliency" or "taylor" (the schema's quantity; docs/protocol.md §1).
        /// Always sent by this daemon; nil only when decoding a reply from one that predates it (= saliency).
        public var quantity: String?
        /// The model-level rule's state (nil only from a daemon that predates it).
        public var model_rule: ModelRule?
        /// The tails the model watches and the row transform its bank monitors: its effective
        /// settings (`[pot]` with its `[models.NAME]` table on top). Nil only from a daemon that
        /// predates them (= the daemon-wide `[pot]` values).
        public var tails: String?
        public var transform: String?
        /// The model's risk q and calibration size (effective, as above; nil from older daemons).
        public var q: Double?
        public init(model: String, fingerprint: String, filters: Int, layers: Int, phase: String, calibration_seen: Int, calibration_total: Int,
                    rows: UInt64, rows_since_start: UInt64, rate_per_s: Double, firing: Int, model_alert: Bool, refits: UInt64, due: Int,
                    alert_rule: RuleInfo, rejected_rows: [String: UInt64], extremes_by_layer: [String: UInt64], extremes_other_layers: UInt64,
                    max_bytes: Int, peak_stride: Int, max_refit_lag_rows: Int?, quantity: String? = "saliency", model_rule: ModelRule? = nil,
                    tails: String? = nil, transform: String? = nil, q: Double? = nil) {
            self.quantity = quantity; self.model_rule = model_rule
            self.tails = tails; self.transform = transform; self.q = q
            self.model = model; self.fingerprint = fingerprint; self.filters = filters; self.layers = layers; self.phase = phase
            self.calibration_seen = calibration_seen; self.calibration_total = calibration_total; self.rows = rows
            self.rows_since_start = rows_since_start; self.rate_per_s = rate_per_s; self.firing = firing; self.model_alert = model_alert
            self.refits = refits; self.due = due; self.alert_rule = alert_rule; self.rejected_rows = rejected_rows
            self.extremes_by_layer = extremes_by_layer; self.extremes_other_layers = extremes_other_layers; self.max_bytes = max_bytes
            self.peak_stride = peak_stride; self.max_refit_lag_rows = max_refit_lag_rows
        }
    }
    public struct Producer: Codable, Sendable, Hashable {
        public var producer: String; public var model: String; public var received: UInt64; public var gaps: UInt64
        public var reordered: UInt64; public var last_sequence: UInt64
        public init(producer: String, model: String, received: UInt64, gaps: UInt64, reordered: UInt64, last_sequence: UInt64) {
            self.producer = producer; self.model = model; self.received = received; self.gaps = gaps; self.reordered = reordered; self.last_sequence = last_sequence
        }
    }
    public struct Limits: Codable, Sendable, Hashable {
        public var admitted_bytes: Int; public var max_total_bytes: Int; public var max_model_bytes: Int; public var max_models: Int
        public var max_layers: Int; public var max_producers: Int
        public init(admitted_bytes: Int, max_total_bytes: Int, max_model_bytes: Int, max_models: Int, max_layers: Int, max_producers: Int) {
            self.admitted_bytes = admitted_bytes; self.max_total_bytes = max_total_bytes; self.max_model_bytes = max_model_bytes
            self.max_models = max_models; self.max_layers = max_layers; self.max_producers = max_producers
        }
    }
    public struct Persistence: Codable, Sendable, Hashable {
        public var alert_log_failures: UInt64; public var alert_log_error: String?
        public var snapshot_failures: UInt64; public var snapshot_error: String?
        public init(alert_log_failures: UInt64, alert_log_error: String?, snapshot_failures: UInt64, snapshot_error: String?) {
            self.alert_log_failures = alert_log_failures; self.alert_log_error = alert_log_error
            self.snapshot_failures = snapshot_failures; self.snapshot_error = snapshot_error
        }
    }

    public var ok = true
    public var version: String; public var uptime_s: Double; public var models: [Model]
    public var rejected: [String: UInt64]; public var gaps: UInt64; public var producers: [Producer]
    public var firing: Int; public var alert_seq: UInt64; public var queries: UInt64
    public var state_directory: String; public var last_snapshot: String?
    /// Instruction set of the FilterBank kernels on this CPU ("avx2", "sse2", "generic").
    public var kernels: String
    /// Arrival of an alert-triggering prediction → its alerts sent on PUB, µs (last ≤ 4096 such messages).
    public var alert_latency_us: [String: Double]
    /// Producers tracked (≤ limits.max_producers); `producers` lists the 32 most recently seen.
    public var producer_count: Int
    public var limits: Limits
    public var persistence: Persistence
    /// Log lines suppressed by the per-kind rate limit (monitor.log_burst).
    public var log_suppressed: UInt64
    public var models_expired: UInt64

    public init(version: String, uptime_s: Double, models: [Model], rejected: [String: UInt64], gaps: UInt64, producers: [Producer],
                firing: Int, alert_seq: UInt64, queries: UInt64, state_directory: String, last_snapshot: String?, kernels: String,
                alert_latency_us: [String: Double], producer_count: Int, limits: Limits, persistence: Persistence,
                log_suppressed: UInt64, models_expired: UInt64) {
        self.version = version; self.uptime_s = uptime_s; self.models = models; self.rejected = rejected; self.gaps = gaps
        self.producers = producers; self.firing = firing; self.alert_seq = alert_seq; self.queries = queries
        self.state_directory = state_directory; self.last_snapshot = last_snapshot; self.kernels = kernels
        self.alert_latency_us = alert_latency_us; self.producer_count = producer_count; self.limits = limits
        self.persistence = persistence; self.log_suppressed = log_suppressed; self.models_expired = models_expired
    }
}

/// `top`: the most salient filters of the latest prediction (or averaged over a window).
public struct TopReply: Codable, Sendable, Hashable {
    public struct Entry: Codable, Sendable, Hashable {
        public var filter: Int; public var layer: String; public var channel: Int; public var score: Double; public var p: Double?
        /// "upper" or "lower": the tail the score is from (only for models that watch the lower tail).
        public var direction: String?
        public init(filter: Int, layer: String, channel: Int, score: Double, p: Double?, direction: String? = nil) {
            self.filter = filter; self.layer = layer; self.channel = channel; self.score = score; self.p = p; self.direction = direction
        }
    }
    public var ok = true
    public var model: String; public var by: String; public var window: Int; public var top: [Entry]
    public init(model: String, by: String, window: Int, top: [Entry]) { self.model = model; self.by = by; self.window = window; self.top = top }
}

/// `filter`: one filter's tail model, counts and recent scores.
public struct FilterReply: Codable, Sendable, Hashable {
    public struct Recent: Codable, Sendable, Hashable {
        public var value: Double; public var score: Double; public var p: Double; public var zscore: Double
        /// "upper" or "lower" (only for models that watch the lower tail).
        public var direction: String?
        public init(value: Double, score: Double, p: Double, zscore: Double, direction: String? = nil) {
            self.value = value; self.score = score; self.p = p; self.zscore = zscore; self.direction = direction
        }
    }
    /// The lower tail (models with `pot.tails` lower or both; docs/statistics.md, "Two tails").
    public struct LowerTail: Codable, Sendable, Hashable {
        public var tail: String; public var threshold: Double; public var extreme_threshold: Double; public var shape: Double; public var scale: Double
        public var n: UInt64; public var peaks: UInt64; public var extremes: UInt64; public var zero_mode: String
        public var calibration_zeros: UInt64; public var zeros: UInt64; public var zero_run: Int; public var zero_run_threshold: Int?
        public var firing: Bool; public var window_exceedances: Int
        public init(tail: String, threshold: Double, extreme_threshold: Double, shape: Double, scale: Double, n: UInt64, peaks: UInt64, extremes: UInt64,
                    zero_mode: String, calibration_zeros: UInt64, zeros: UInt64, zero_run: Int, zero_run_threshold: Int?, firing: Bool, window_exceedances: Int) {
            self.tail = tail; self.threshold = threshold; self.extreme_threshold = extreme_threshold; self.shape = shape; self.scale = scale
            self.n = n; self.peaks = peaks; self.extremes = extremes; self.zero_mode = zero_mode; self.calibration_zeros = calibration_zeros
            self.zeros = zeros; self.zero_run = zero_run; self.zero_run_threshold = zero_run_threshold; self.firing = firing; self.window_exceedances = window_exceedances
        }
    }
    /// The lower tail, when the model watches it.
    public var lower: LowerTail?
    public var ok = true
    public var model: String; public var filter: Int; public var layer: String; public var channel: Int
    public var tail: String; public var threshold: Double; public var extreme_threshold: Double; public var shape: Double; public var scale: Double
    public var n: UInt64; public var peaks: UInt64; public var peaks_in_ring: Int; public var peaks_since_fit: Int; public var due: Bool
    public var extremes: UInt64; public var mean: Double; public var std: Double; public var firing: Bool; public var window_exceedances: Int
    public var recent: [Recent]
    public init(model: String, filter: Int, layer: String, channel: Int, tail: String, threshold: Double, extreme_threshold: Double,
                shape: Double, scale: Double, n: UInt64, peaks: UInt64, peaks_in_ring: Int, peaks_since_fit: Int, due: Bool,
                extremes: UInt64, mean: Double, std: Double, firing: Bool, window_exceedances: Int, recent: [Recent]) {
        self.model = model; self.filter = filter; self.layer = layer; self.channel = channel; self.tail = tail; self.threshold = threshold
        self.extreme_threshold = extreme_threshold; self.shape = shape; self.scale = scale; self.n = n; self.peaks = peaks
        self.peaks_in_ring = peaks_in_ring; self.peaks_since_fit = peaks_since_fit; self.due = due; self.extremes = extremes
        self.mean = mean; self.std = std; self.firing = firing; self.window_exceedances = window_exceedances; self.recent = recent
    }
}

/// `alerts`: retained alerts after `since` (or the active ones), oldest first.
public struct AlertsReply: Codable, Sendable, Hashable {
    public var ok = true
    public var last_seq: UInt64
    /// The oldest seq the daemon still retains (absent for `active`).
    public var oldest_retained: UInt64?
    /// The reply was cut at `query.max_reply_bytes`: ask again with `since` = the last seq here.
    public var truncated: Bool?
    public var alerts: [AlertMessage]
}

/// `snapshot` (admin): where the state was written.
public struct SnapshotReply: Codable, Sendable, Hashable {
    public var ok = true
    public var snapshot: String
    public init(snapshot: String) { self.snapshot = snapshot }
}

/// `reset` (admin): the model whose state was forgotten.
public struct ResetReply: Codable, Sendable, Hashable {
    public var ok = true
    public var reset: String
    public init(reset: String) { self.reset = reset }
}

// MARK: - Alerts

/// An alert as published on `alert.<status>.<model>.<layer>` and kept in the durable log
/// (docs/protocol.md §3): Alertmanager's v2 alert shape plus saliency figures.
public struct AlertMessage: Codable, Sendable, Hashable {
    public enum Status: String, Codable, Sendable { case firing, resolved }

    public var seq: UInt64
    public var status: Status
    public var labels: [String: String]
    public var annotations: [String: String]
    public var startsAt: String
    public var endsAt: String
    public var fingerprint: String
    public var model: String
    public var filter: Int?
    public var layer: String
    public var channel: Int?
    public var score: Double?
    public var p: Double?
    public var threshold: Double?
    public var extreme_threshold: Double?
    public var exceedances: Int?
    public var window: Int?
    public var value: Double?
    public var resent: Bool?

    /// Alertmanager's "zero time" for `endsAt` of a firing alert.
    public static let zeroTime = "0001-01-01T00:00:00Z"

    public init(seq: UInt64 = 0, status: Status, labels: [String: String], annotations: [String: String], startsAt: String,
                endsAt: String = AlertMessage.zeroTime, model: String, filter: Int?, layer: String, channel: Int?,
                score: Double?, p: Double?, threshold: Double?, extreme_threshold: Double?, exceedances: Int?, window: Int?,
                value: Double?, resent: Bool? = nil) {
        self.seq = seq; self.status = status; self.labels = labels; self.annotations = annotations; self.startsAt = startsAt
        self.endsAt = endsAt; self.fingerprint = Self.fingerprint(of: labels); self.model = model; self.filter = filter
        self.layer = layer; self.channel = channel; self.score = score; self.p = p; self.threshold = threshold
        self.extreme_threshold = extreme_threshold; self.exceedances = exceedances; self.window = window; self.value = value
        self.resent = resent
    }

    /// The alert as JSON: exactly what `Wire.encode` produces (sorted keys, ±∞/NaN as strings),
    /// written by hand because Foundation's encoder cost ~100 µs per alert, most of the
    /// arrival→publish budget. A test checks the two agree.
    public func json() -> [UInt8] {
        var o = JSONWriter()
        o.open()
        o.key("annotations"); o.object(annotations)
        if let v = channel { o.key("channel"); o.int(v) }
        o.key("endsAt"); o.string(endsAt)
        if let v = exceedances { o.key("exceedances"); o.int(v) }
        if let v = extreme_threshold { o.key("extreme_threshold"); o.double(v) }
        if let v = filter { o.key("filter"); o.int(v) }
        o.key("fingerprint"); o.string(fingerprint)
        o.key("labels"); o.object(labels)
        o.key("layer"); o.string(layer)
        o.key("model"); o.string(model)
        if let v = p { o.key("p"); o.double(v) }
        if let v = resent { o.key("resent"); o.raw(v ? "true" : "false") }
        if let v = score { o.key("score"); o.double(v) }
        o.key("seq"); o.raw(String(seq))
        o.key("startsAt"); o.string(startsAt)
        o.key("status"); o.string(status.rawValue)
        if let v = threshold { o.key("threshold"); o.double(v) }
        if let v = value { o.key("value"); o.double(v) }
        if let v = window { o.key("window"); o.int(v) }
        o.close()
        return o.bytes
    }

    /// Alertmanager's fingerprint of a label set, exactly (prometheus/common `labelSetToFingerprint`,
    /// shown by Alertmanager's API as `fingerprint`): FNV-1a 64 over the label names sorted bytewise,
    /// each contributing `name, 0xff, value, 0xff`; 16 lowercase hex digits. An empty set hashes to
    /// the FNV offset basis. docs/protocol.md §3.
    public static func fingerprint(of labels: [String: String]) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        @inline(__always) func mix(_ b: UInt8) { h ^= UInt64(b); h = h &* 0x100_0000_01b3 }
        for (k, v) in labels.sorted(by: { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }) {
            for b in k.utf8 { mix(b) }
            mix(0xff)
            for b in v.utf8 { mix(b) }
            mix(0xff)
        }
        let s = String(h, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

/// A minimal JSON writer for flat objects (alerts, requests): the output `Wire.encode` gives.
public struct JSONWriter {
    public private(set) var bytes: [UInt8] = []
    var first = true
    public init() { bytes.reserveCapacity(768) }
    public mutating func open() { bytes.append(UInt8(ascii: "{")); first = true }
    public mutating func close() { bytes.append(UInt8(ascii: "}")) }
    public mutating func key(_ k: String) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        string(k)
        bytes.append(UInt8(ascii: ":"))
    }
    public mutating func raw(_ s: String) { bytes.append(contentsOf: s.utf8) }
    public mutating func int(_ v: Int) { raw(String(v)) }
    public mutating func double(_ v: Double) {
        if v.isNaN { string("nan") } else if v.isInfinite { string(v > 0 ? "inf" : "-inf") } else {
            // JSONEncoder's form: the shortest round-trip digits, without a trailing ".0".
            var d = "\(v)"
            if d.hasSuffix(".0") { d.removeLast(2) }
            raw(d)
        }
    }
    public mutating func string(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        for u in s.utf8 {
            switch u {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [92, 34])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [92, 92])
            case 0x0A: bytes.append(contentsOf: [92, 110])
            case 0x0D: bytes.append(contentsOf: [92, 114])
            case 0x09: bytes.append(contentsOf: [92, 116])
            case 0x08: bytes.append(contentsOf: [92, 98])
            case 0x0C: bytes.append(contentsOf: [92, 102])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [92, 117, 48, 48, hex[Int(u >> 4)], hex[Int(u & 15)]])
            default: bytes.append(u)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
    public mutating func object(_ d: [String: String]) {
        let saved = first
        open()
        for (k, v) in d.sorted(by: { $0.key < $1.key }) { key(k); string(v) }
        close()
        first = saved
    }
}
