import EVTOnline
import Foundation
import SaliencyCore
import SaliencyStream

/// One model's learned state and alert lifecycle: FilterBank + AlertTracker + a ring of recent rows.
/// Owned by the engine thread; not Sendable.
final class ModelEngine {
    let schema: ModelSchema
    let fingerprint: UInt64
    let bank: FilterBank
    var tracker: AlertTracker
    var events: [AlertTransition] = []
    /// The recent window (`top --window`, alert figures): slot i holds a row either as a retained
    /// feed frame (`frames`, no copy: the FilterBank reads the payload where libzmq put it) or, for
    /// rows that arrive another way or misaligned, as a copy in `copies` (allocated on first need).
    let recentCapacity: Int
    let frames: FrameRing
    var copies: UnsafeMutablePointer<Float>?
    var rowStart: [UnsafePointer<Float>?]
    var recentHead = 0
    var recentCount = 0
    /// Rows accepted since the daemon (re)started, for rates.
    var acceptedSinceStart: UInt64 = 0
    /// When the last accepted row arrived (nil: none since the daemon started) and when the
    /// model was registered or restored: idle expiry measures from the later of the two.
    var lastArrival: ContinuousClock.Instant?
    let registeredAt = ContinuousClock.now
    /// The most memory this model may claim, charged against `limits.max_total_bytes`.
    private(set) var maximumBytes = 0
    /// Active alerts: filter → record; `nil` key handled separately for the model level.
    var active: [Int: AlertRecord] = [:]
    var modelAlert: AlertRecord?
    /// Extreme exceedances per layer since start (metrics).
    var layerExtremes: [UInt64]
    /// Layer index per filter (hot path: per-layer counting of extremes).
    let layerOf: [UInt16]

    convenience init(schema: ModelSchema, pot: POTConfiguration, budget: AlertBudget, safetyFactor: Double, modelBurnIn: Int = 10_000, recentRows: Int,
                     rule designed: AlertRule? = nil) throws(SaliencyError) {
        let bank = try FilterBank(filterCount: schema.filterCount, configuration: pot)
        let rule: AlertRule
        if let designed { rule = designed } else {
            rule = try AlertRule.design(filters: schema.filterCount, q: pot.q, budget: budget, safetyFactor: safetyFactor,
                                        model: ModelShiftRule(burnIn: modelBurnIn))
        }
        try self.init(schema: schema, bank: bank, tracker: AlertTracker(filterCount: schema.filterCount, rule: rule), recentRows: recentRows)
    }

    init(schema: ModelSchema, bank: FilterBank, tracker: consuming AlertTracker, recentRows: Int) throws(SaliencyError) {
        self.schema = schema
        self.fingerprint = schema.fingerprint
        self.bank = bank
        self.tracker = tracker
        self.recentCapacity = recentRows
        self.frames = FrameRing(count: recentRows)
        self.rowStart = Array(repeating: nil, count: recentRows)
        self.layerExtremes = Array(repeating: 0, count: schema.layers.count)
        var layerOf = [UInt16](repeating: 0, count: schema.filterCount)
        for l in 0..<schema.layers.count {
            for j in schema.offsets[l]..<schema.offsets[l + 1] { layerOf[j] = UInt16(l) }
        }
        self.layerOf = layerOf
        events.reserveCapacity(64)
        self.maximumBytes = Self.windowAndAlertBytes(filters: schema.filterCount, layers: schema.layers.count, recentRows: recentRows)
            + (FilterBank.maximumBytes(filterCount: schema.filterCount, configuration: bank.configuration) ?? 0)
    }

    /// Upper bound of the alert tracker's fire count (`AlertRule.design`'s `maxFireCount`).
    static let maxFireCount = 16

    /// Bytes besides the FilterBank: the recent-rows window (`recentRows × K` floats, whether
    /// retained frames or copies), the layer index, the alert tracker (`8·K·c + 9·K`, c ≤ 16).
    static func windowAndAlertBytes(filters k: Int, layers: Int, recentRows: Int) -> Int {
        k * (recentRows * 4 + 2 + 8 * maxFireCount + 9) + layers * 64 + recentRows * 128 + 16_384
    }

    /// The most memory a model of `schema` can claim under `configuration` (nil: overflows),
    /// computed before anything is allocated (admission control, docs/security.md).
    static func maximumBytes(schema: ModelSchema, configuration: DaemonConfiguration) -> Int? {
        guard let bank = FilterBank.maximumBytes(filterCount: schema.filterCount, configuration: configuration.pot) else { return nil }
        let (t, o) = bank.addingReportingOverflow(windowAndAlertBytes(filters: schema.filterCount, layers: schema.layers.count, recentRows: configuration.monitor.recentRows))
        return o ? nil : t
    }

    deinit { copies?.deallocate() }

    var filterCount: Int { schema.filterCount }

    /// Absorbs a validated row; returns the alert transitions it caused (valid until the next call).
    func absorb(_ row: UnsafeBufferPointer<Float>) -> FilterBank.RowResult {
        precondition(row.count == filterCount)
        return absorb(copying: UnsafeRawBufferPointer(row))
    }

    /// Absorbs a validated payload (4·K bytes, any alignment) by copying it into the window.
    func absorb(copying payload: UnsafeRawBufferPointer) -> FilterBank.RowResult {
        let slot = recentHead
        frames.clear(slot)
        let dst = copySlot(slot)
        UnsafeMutableRawPointer(dst).copyMemory(from: payload.baseAddress!, byteCount: filterCount * 4)
        rowStart[slot] = UnsafePointer(dst)
        return absorbSlot(slot)
    }

    /// Absorbs a validated payload that `move` places into the given slot of `frames` without
    /// copying (`ZMQMultipart.move(frame:to:slot:)`). A frame whose bytes are not 4-byte aligned
    /// is copied after all (the FilterBank reads `Float`s).
    func absorb(retaining move: (FrameRing, Int) -> Void) -> FilterBank.RowResult {
        let slot = recentHead
        move(frames, slot)
        let bytes = frames.frame(slot)
        precondition(bytes.count == filterCount * 4, "retained payload of \(bytes.count) bytes, expected \(filterCount * 4)")
        if let base = bytes.baseAddress, Int(bitPattern: base) % MemoryLayout<Float>.alignment == 0 {
            rowStart[slot] = UnsafePointer(base.assumingMemoryBound(to: Float.self))
        } else {
            let dst = copySlot(slot)
            UnsafeMutableRawPointer(dst).copyMemory(from: bytes.baseAddress!, byteCount: filterCount * 4)
            frames.clear(slot)
            rowStart[slot] = UnsafePointer(dst)
        }
        return absorbSlot(slot)
    }

    private func copySlot(_ slot: Int) -> UnsafeMutablePointer<Float> {
        if copies == nil { copies = .allocate(capacity: recentCapacity * filterCount) }
        return copies! + slot * filterCount
    }

    /// Updates the statistics with the row in `slot`, which becomes the newest of the window.
    private func absorbSlot(_ slot: Int) -> FilterBank.RowResult {
        let r = bank.updateValidated(UnsafeBufferPointer(start: rowStart[slot]!, count: filterCount))
        acceptedSinceStart &+= 1
        recentHead = (recentHead + 1) % recentCapacity
        recentCount = min(recentCount + 1, recentCapacity)
        events.removeAll(keepingCapacity: true)
        if bank.isCalibrated && !r.calibrated {
            let ex = bank.lastExtremes
            for j in ex { layerExtremes[Int(layerOf[Int(j)])] &+= 1 }
            tracker.record(row: bank.rows, extremes: ex, into: &events)
        }
        return r
    }

    /// The newest row (after at least one).
    var latestRow: UnsafeBufferPointer<Float>? {
        guard recentCount > 0 else { return nil }
        let i = (recentHead - 1 + recentCapacity) % recentCapacity
        return UnsafeBufferPointer(start: rowStart[i]!, count: filterCount)
    }

    /// The newest `n` rows, newest first.
    func recentRows(_ n: Int) -> [UnsafeBufferPointer<Float>] {
        let m = min(n, recentCount)
        return (0..<m).map { back in
            let i = (recentHead - 1 - back + 2 * recentCapacity) % recentCapacity
            return UnsafeBufferPointer(start: rowStart[i]!, count: filterCount)
        }
    }

    func layerName(of filter: Int) -> (layer: String, channel: Int) {
        let (l, c) = schema.locate(filter)
        return (schema.layers[l].name, c)
    }
}

/// An alert as published and logged (Alertmanager v2 shape plus saliency figures).
struct AlertRecord: Codable, Sendable, Hashable {
    var seq: UInt64
    var status: String
    var labels: [String: String]
    var annotations: [String: String]
    var startsAt: String
    var endsAt: String
    var fingerprint: String
    var model: String
    var filter: Int?
    var layer: String
    var channel: Int?
    var score: Double?
    var p: Double?
    var threshold: Double?
    var extreme_threshold: Double?
    var exceedances: Int?
    var window: Int?
    var value: Double?
    var resent: Bool?

    static let zeroTime = "0001-01-01T00:00:00Z"

    /// Now, as RFC 3339 UTC with milliseconds, without Foundation formatters (hot alert path).
    static func now() -> String { DaemonLogHandler.timestamp() }

    /// The alert as JSON (sorted keys; ±∞/NaN as the strings "inf"/"-inf"/"nan", like the snapshot
    /// encoder). Hand-written: Foundation's JSONEncoder cost ~100 µs per alert, most of the
    /// arrival→publish budget.
    func json() -> [UInt8] {
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
        o.key("status"); o.string(status)
        if let v = threshold { o.key("threshold"); o.double(v) }
        if let v = value { o.key("value"); o.double(v) }
        if let v = window { o.key("window"); o.int(v) }
        o.close()
        return o.bytes
    }

    /// Alertmanager-style fingerprint: FNV-1a of the sorted labels.
    static func fingerprint(of labels: [String: String]) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for (k, v) in labels.sorted(by: { $0.key < $1.key }) {
            for b in k.utf8 { h ^= UInt64(b); h = h &* 0x100_0000_01b3 }
            h ^= 0xff; h = h &* 0x100_0000_01b3
            for b in v.utf8 { h ^= UInt64(b); h = h &* 0x100_0000_01b3 }
            h ^= 0xfe; h = h &* 0x100_0000_01b3
        }
        let s = String(h, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

/// A minimal JSON writer for flat objects (alerts).
struct JSONWriter {
    var bytes: [UInt8] = []
    var first = true
    init() { bytes.reserveCapacity(768) }
    mutating func open() { bytes.append(UInt8(ascii: "{")); first = true }
    mutating func close() { bytes.append(UInt8(ascii: "}")) }
    mutating func key(_ k: String) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        string(k)
        bytes.append(UInt8(ascii: ":"))
    }
    mutating func raw(_ s: String) { bytes.append(contentsOf: s.utf8) }
    mutating func int(_ v: Int) { raw(String(v)) }
    mutating func double(_ v: Double) {
        if v.isNaN { string("nan") } else if v.isInfinite { string(v > 0 ? "inf" : "-inf") } else { raw("\(v)") }
    }
    mutating func string(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        for u in s.utf8 {
            switch u {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [92, 34])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [92, 92])
            case 0x0A: bytes.append(contentsOf: [92, 110])
            case 0x0D: bytes.append(contentsOf: [92, 114])
            case 0x09: bytes.append(contentsOf: [92, 116])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [92, 117, 48, 48, hex[Int(u >> 4)], hex[Int(u & 15)]])
            default: bytes.append(u)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
    mutating func object(_ d: [String: String]) {
        let saved = first
        open()
        for (k, v) in d.sorted(by: { $0.key < $1.key }) { key(k); string(v) }
        close()
        first = saved
    }
}
