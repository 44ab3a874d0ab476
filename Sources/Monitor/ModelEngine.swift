import EVTOnline
import Foundation
import SaliencyCore
import SaliencyStream

/// One model's learned state and alert lifecycle: FilterBank + AlertTracker + a ring of recent rows.
/// Owned by the engine thread; not Sendable.
///
/// This is the only type of the daemon that holds a `FilterBank`: rows go in (`absorb`), finished
/// alerts come out (`alerts(at:)`), and queries get typed answers (`statusEntry`, `top`, `filter`);
/// `DaemonCore` routes between sockets, the log and the engines without reading the statistics.
final class ModelEngine {
    let schema: ModelSchema
    let fingerprint: UInt64
    private let bank: FilterBank
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
    /// Active (published, firing) alerts: filter → alert; the model-level one separately.
    var active: [Int: AlertMessage] = [:]
    var modelAlert: AlertMessage?
    /// Extreme exceedances per layer since start (metrics): upper tail.
    var layerExtremes: [UInt64]
    /// Lower-tail extremes per layer since start (models with `pot.tails` lower or both).
    var layerLowerExtremes: [UInt64]
    /// The tracker's slots: with `tails = both` filter j's upper tail is slot j and its lower
    /// tail slot K + j (each tail has its own alert); otherwise slot j is filter j's one tail.
    var trackerSlots: Int { configuration.tails == .both ? 2 * filterCount : filterCount }
    /// Reused list of the row's extreme slots (both tails).
    private var slotScratch: [Int32] = []
    /// Layer index per filter (hot path: per-layer counting of extremes).
    let layerOf: [UInt16]
    /// The common-mode-free transform the bank monitors (`pot.transform`; nil for "none") and the
    /// newest row as the bank saw it (K floats, written by `absorbSlot`; docs/statistics.md).
    let rowTransform: RowTransform?
    let transformedNewest: UnsafeMutablePointer<Float>?

    convenience init(schema: ModelSchema, pot: POTConfiguration, budget: AlertBudget, safetyFactor: Double, modelBurnIn: Int = 10_000,
                     modelNullSample: ModelShiftNullSample = .crossFit, recentRows: Int,
                     rule designed: AlertRule? = nil) throws(SaliencyError) {
        let bank = try FilterBank(filterCount: schema.filterCount, configuration: pot)
        let rule: AlertRule
        if let designed { rule = designed } else {
            rule = try AlertRule.design(filters: schema.filterCount, q: pot.q, budget: budget, safetyFactor: safetyFactor,
                                        model: ModelShiftRule(burnIn: modelBurnIn, nullSample: modelNullSample))
        }
        let slots = pot.tails == .both ? 2 * schema.filterCount : schema.filterCount
        try self.init(schema: schema, bank: bank, tracker: AlertTracker(filterCount: slots, rule: rule), recentRows: recentRows)
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
        self.layerLowerExtremes = Array(repeating: 0, count: schema.layers.count)
        var layerOf = [UInt16](repeating: 0, count: schema.filterCount)
        for l in 0..<schema.layers.count {
            for j in schema.offsets[l]..<schema.offsets[l + 1] { layerOf[j] = UInt16(l) }
        }
        self.layerOf = layerOf
        if bank.configuration.transform != .none {
            self.rowTransform = RowTransform(kind: bank.configuration.transform, offsets: schema.offsets)
            self.transformedNewest = .allocate(capacity: schema.filterCount)
        } else {
            self.rowTransform = nil
            self.transformedNewest = nil
        }
        events.reserveCapacity(64)
        self.maximumBytes = Self.windowAndAlertBytes(filters: schema.filterCount, layers: schema.layers.count, recentRows: recentRows, tails: bank.configuration.tails)
            + (bank.configuration.transform == .none ? 0 : 4 * schema.filterCount)
            + (FilterBank.maximumBytes(filterCount: schema.filterCount, configuration: bank.configuration) ?? 0)
        // The model-level rule's null sample: cross-fitted on the calibration rows when they are
        // still there (a model restored mid-burn-in finishes its burn-in instead).
        let modelRule = self.tracker.rule.model
        if modelRule.isEnabled, modelRule.nullSample == .crossFit, !bank.isCalibrated, self.tracker.modelCalibration == nil {
            bank.requestCrossFit(bins: modelRule.histogramBins)
            self.maximumBytes += FilterBank.crossFitTransientBytes(filterCount: schema.filterCount, configuration: bank.configuration) ?? 0
        }
    }

    /// Why the model-level cross-fit failed at calibration end (the rule then burns in for
    /// `model_burn_in` rows); taken once by the owner for its log.
    var crossFitFailure: String?

    /// Upper bound of the alert tracker's fire count (`AlertRule.design`'s `maxFireCount`).
    static let maxFireCount = 16

    /// Bytes besides the FilterBank: the recent-rows window (`recentRows × K` floats, whether
    /// retained frames or copies), the layer index, the alert tracker (`8·K·c + 9·K`, c ≤ 16).
    static func windowAndAlertBytes(filters k: Int, layers: Int, recentRows: Int, tails: TailSelection = .upper) -> Int {
        let trackers = tails == .both ? 2 : 1
        return k * (recentRows * 4 + 2 + trackers * (8 * maxFireCount + 9) + (tails == .both ? 4 : 0)) + layers * 128 + recentRows * 128 + 16_384
    }

    /// The most memory a model of `schema` can claim under `configuration` (nil: overflows),
    /// computed before anything is allocated (admission control, docs/security.md), with the
    /// model's own settings (`[pot]` with its `[models.NAME]` table on top).
    static func maximumBytes(schema: ModelSchema, configuration: DaemonConfiguration) -> Int? {
        let pot = configuration.pot(for: schema.model)
        guard var bank = FilterBank.maximumBytes(filterCount: schema.filterCount, configuration: pot) else { return nil }
        if configuration.modelNullSample == .crossFit, configuration.alerting.modelShare > 0 {
            // The cross-fit's fold bank lives next to the calibration buffer at calibration end.
            guard let x = FilterBank.crossFitTransientBytes(filterCount: schema.filterCount, configuration: pot) else { return nil }
            let (b, o) = bank.addingReportingOverflow(x)
            if o { return nil }
            bank = b
        }
        let (t, o) = bank.addingReportingOverflow(windowAndAlertBytes(filters: schema.filterCount, layers: schema.layers.count, recentRows: configuration.monitor.recentRows, tails: pot.tails)
            + (pot.transform == .none ? 0 : 4 * schema.filterCount))
        return o ? nil : t
    }

    deinit { copies?.deallocate(); transformedNewest?.deallocate() }

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
        let raw = UnsafeBufferPointer(start: rowStart[slot]!, count: filterCount)
        let r: FilterBank.RowResult
        if let t = rowTransform, let out = transformedNewest {
            t.apply(raw, into: UnsafeMutableBufferPointer(start: out, count: filterCount))
            r = bank.updateValidated(UnsafeBufferPointer(start: out, count: filterCount))
        } else {
            r = bank.updateValidated(raw)
        }
        acceptedSinceStart &+= 1
        recentHead = (recentHead + 1) % recentCapacity
        recentCount = min(recentCount + 1, recentCapacity)
        events.removeAll(keepingCapacity: true)
        if r.calibrated, let crossFit = bank.takeCrossFit() {
            switch crossFit {
            case .success(let histogram): tracker.calibrateModel(histogram: histogram, source: .crossFit, into: &events)
            case .failure(let error): crossFitFailure = error.message
            }
        }
        if bank.isCalibrated && !r.calibrated {
            let ex = bank.lastExtremes
            for j in ex { layerExtremes[Int(layerOf[Int(j)])] &+= 1 }
            switch configuration.tails {
            case .upper:
                tracker.record(row: bank.rows, extremes: ex, into: &events)
            case .lower:
                let lo = bank.lastLowerExtremes
                for j in lo { layerLowerExtremes[Int(layerOf[Int(j)])] &+= 1 }
                tracker.record(row: bank.rows, extremes: lo, into: &events)
            case .both:
                // Slots ascending: the upper tails' [0, K), then the lower tails' K + j.
                let lo = bank.lastLowerExtremes
                slotScratch.removeAll(keepingCapacity: true)
                slotScratch.append(contentsOf: ex)
                let k = Int32(filterCount)
                for j in lo { layerLowerExtremes[Int(layerOf[Int(j)])] &+= 1; slotScratch.append(k + j) }
                slotScratch.withUnsafeBufferPointer { tracker.record(row: bank.rows, extremes: $0, into: &events) }
            }
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

    /// The newest row as the bank saw it: transformed when `pot.transform` is set.
    var latestBankRow: UnsafeBufferPointer<Float>? {
        guard let raw = latestRow else { return nil }
        return transformedNewest.map { UnsafeBufferPointer(start: $0, count: filterCount) } ?? raw
    }

    /// Calls `body` with the newest `n` rows as the bank sees them, newest first (transformed
    /// into a temporary buffer when `pot.transform` is set: queries only, never the feed path).
    func withRecentBankRows<R>(_ n: Int, _ body: ([UnsafeBufferPointer<Float>]) throws(SaliencyError) -> R) throws(SaliencyError) -> R {
        let raw = recentRows(n)
        guard let t = rowTransform, !raw.isEmpty else { return try body(raw) }
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: raw.count * filterCount)
        defer { buf.deallocate() }
        let rows = raw.enumerated().map { i, r in
            let out = UnsafeMutableBufferPointer(start: buf + i * filterCount, count: filterCount)
            t.apply(r, into: out)
            return UnsafeBufferPointer(out)
        }
        return try body(rows)
    }

    /// The scorer that answers `by` for this model: a raw `pot`/`zscore` is answered on the rows
    /// the bank monitors (the transformed scorer when `pot.transform` is set; the reply's `by`
    /// names it); a transformed scorer needs the bank to monitor that transform.
    func resolve(_ by: ScoreKind) throws(SaliencyError) -> ScoreKind {
        let t = configuration.transform
        if by.tailModel == .pooledZscore, t != .none {
            throw SaliencyError(.badRequest, "model '\(schema.model)' monitors \(t.rawValue) rows (pot.transform = \"\(t.rawValue)\"); pooled-zscore ranks raw rows only: use \(ScoreKind(tail: .zscore, transform: t).rawValue) here, or run saliencyctl analyze --by pooled-zscore offline")
        }
        guard by.transform == .none || by.transform == t else {
            let offered = t == .none ? "pot, zscore, pooled-zscore" : "\(ScoreKind(tail: .pot, transform: t).rawValue), \(ScoreKind(tail: .zscore, transform: t).rawValue)"
            throw SaliencyError(.badRequest, "model '\(schema.model)' monitors \(t == .none ? "raw saliency rows" : "\(t.rawValue) rows") (pot.transform = \"\(t.rawValue)\"), so it can rank by \(offered); scorer \(by.rawValue) needs transform = \"\(by.transform.rawValue)\" in the daemon's configuration ([pot], or [models.\(DaemonConfiguration.quotedName(schema.model))] for this model alone; restart: the model recalibrates), or run it offline with saliencyctl analyze --by \(by.rawValue)")
        }
        return ScoreKind(tail: by.tailModel, transform: t)
    }

    /// The filter and tail of a tracker slot (see `trackerSlots`).
    func filterAndDirection(ofSlot slot: Int) -> (filter: Int, direction: TailDirection) {
        switch configuration.tails {
        case .upper: (slot, .upper)
        case .lower: (slot, .lower)
        case .both: slot >= filterCount ? (slot - filterCount, .lower) : (slot, .upper)
        }
    }

    /// The tracker slot of filter j's tail `direction` (nil: the model does not watch it).
    func slot(filter j: Int, direction: TailDirection) -> Int? {
        switch (configuration.tails, direction) {
        case (.upper, .upper), (.lower, .lower): j
        case (.both, .upper): j
        case (.both, .lower): filterCount + j
        default: nil
        }
    }

    func layerName(of filter: Int) -> (layer: String, channel: Int) {
        let (l, c) = schema.locate(filter)
        return (schema.layers[l].name, c)
    }
}


// MARK: - The bank, seen from the daemon

extension ModelEngine {
    var isCalibrated: Bool { bank.isCalibrated }
    var phase: FilterBank.Phase { bank.phase }
    /// Valid rows absorbed (calibration included).
    var rows: UInt64 { bank.rows }
    var configuration: POTConfiguration { bank.configuration }
    var refitCount: UInt64 { bank.refitCount }

    /// Refits up to `limit` due filters (idle time). Returns how many.
    func refitDue(limit: Int) -> Int { bank.isCalibrated ? bank.refitDue(limit: limit) : 0 }

    /// POT scores of the `k` most salient filters of the latest row (metrics), best first.
    func topScores(_ k: Int) -> [Double] {
        guard bank.isCalibrated, let row = latestBankRow else { return [] }
        return bank.top(row, k: k, by: .pot, newest: true).map(\.score)
    }

    /// POT scores (−log10 p) of every filter of the latest row (the status page's heat map); nil
    /// while calibrating or before the first row since the daemon started.
    func latestScores() -> [Double]? {
        guard bank.isCalibrated, let row = latestBankRow else { return nil }
        return [Double](unsafeUninitializedCapacity: filterCount) { out, n in
            bank.score(row, by: .pot, into: out, newest: true)
            n = filterCount
        }
    }

    /// Filters whose value in the latest row exceeded their extreme threshold (ascending; the
    /// status page outlines them); empty while calibrating.
    var latestExtremes: [Int] {
        guard bank.isCalibrated, latestRow != nil else { return [] }
        return bank.lastExtremes.map { Int($0) }
    }

    /// Filter `j`'s value, score, p and z in the newest `n` rows of the window, oldest first
    /// (the status page's sparkline); empty while calibrating.
    func history(filter j: Int, rows n: Int) -> [FilterReply.Recent] {
        guard bank.isCalibrated, j >= 0, j < filterCount else { return [] }
        return (try? withRecentBankRows(n) { (rows: [UnsafeBufferPointer<Float>]) throws(SaliencyError) -> [FilterReply.Recent] in
            rows.reversed().map { row in
                let p = bank.tailProbability(filter: j, value: row[j])
                return FilterReply.Recent(value: Double(row[j]), score: POT.score(p: p), p: p, zscore: bank.zScore(filter: j, value: row[j]))
            }
        }) ?? []
    }

    /// One filter's report (read-only introspection: tests, `state inspect`).
    func report(filter j: Int) -> FilterBank.FilterReport { bank.report(filter: j) }
    /// Rows the bank itself refused (never happens behind `PayloadCheck`; tests check it stays empty).
    var rejectedRows: [RowRejection: UInt64] { bank.rejected }
    /// The bank's binary state on its own (tests compare two engines with it).
    func serializedBankState() -> [UInt8] { bank.serializedState() }

    /// Appends the bank's binary state (snapshots).
    func serializeBank(into w: inout ByteWriter) { bank.serialize(into: &w) }
    var serializedSizeBound: Int { bank.serializedSizeBound }

    /// Tail summary over all filters (`saliencyctl state inspect`).
    func tailCensus() -> (tails: [String: Int], extremes: UInt64) {
        var tails: [String: Int] = [:]
        var extremes: UInt64 = 0
        for j in 0..<filterCount {
            let rep = bank.report(filter: j)
            tails[rep.tail.rawValue, default: 0] += 1
            extremes += rep.extremes
        }
        return (tails, extremes)
    }
}

// MARK: - Finished alerts

extension ModelEngine {
    /// What the last `absorb` changed in the alert state, as finished alerts (without `seq`:
    /// `DaemonCore.publish` numbers, logs and sends them, then hands firing ones back through
    /// `published`). A firing filter's tail model is frozen until it resolves, so a persistent
    /// shift is not learned as normal. `modelCalibrated` reports the model-level rule's burn-in end.
    func alerts(at now: String, row raw: UnsafeBufferPointer<Float>) -> (alerts: [AlertMessage], modelCalibrated: ModelShiftCalibration?) {
        // Thresholds and p are about the row the bank saw (transformed when pot.transform is set).
        let row = transformedNewest.map { UnsafeBufferPointer(start: $0, count: filterCount) } ?? raw
        let valueName = rowTransform.map { "\($0.kind.rawValue) value" } ?? "Saliency"
        var out: [AlertMessage] = []
        var calibrated: ModelShiftCalibration?
        let model = schema.model
        for t in events {
            switch t {
            case .fired(let slot, let count):
                let (j, direction) = filterAndDirection(ofSlot: slot)
                let (layer, channel) = layerName(of: j)
                let p: Double, threshold: Double, extreme: Double, summary: String
                if direction == .lower, let lo = bank.lowerReport(filter: j) {
                    p = bank.lowerTailProbability(filter: j, value: row[j], newest: true)
                    threshold = lo.threshold; extreme = lo.extremeThreshold
                    summary = row[j] == 0 && lo.zeroMode != .extreme
                        ? "\(layer)[\(channel)] (filter \(j)) was exactly 0 for at least \(lo.zeroRunThreshold ?? 1) predictions in a row, in \(count) of the last \(tracker.rule.window) predictions (lower tail: quiet or dead filter)"
                        : "\(layer)[\(channel)] (filter \(j)) fell below its lower extreme threshold in \(count) of the last \(tracker.rule.window) predictions (lower tail: quiet or dead filter)"
                } else {
                    let rep = bank.report(filter: j)
                    p = bank.upperTailProbability(filter: j, value: row[j])
                    threshold = rep.threshold; extreme = rep.extremeThreshold
                    summary = "\(layer)[\(channel)] (filter \(j)) exceeded its extreme threshold in \(count) of the last \(tracker.rule.window) predictions"
                }
                out.append(AlertMessage(
                    status: .firing,
                    labels: ["alertname": "SalientFilter", "model": model, "layer": layer, "filter": "\(j)", "channel": "\(channel)", "severity": "warning",
                             "direction": direction.rawValue],
                    annotations: [
                        "summary": summary,
                        "description": "\(valueName) \(row[j])\(rowTransform == nil ? "" : " (saliency \(raw[j]))") vs \(direction == .lower ? "lower " : "")extreme threshold \(Float(extreme)) (\(direction.rawValue) tail p = \(Float(p))). Inspect with: saliencyctl filter --model \(model) \(j)",
                        "direction": direction.rawValue,
                    ],
                    startsAt: now, model: model, filter: j, layer: layer, channel: channel, score: POT.score(p: p), p: p,
                    threshold: threshold, extreme_threshold: extreme, exceedances: count,
                    window: tracker.rule.window, value: Double(row[j])))
                bank.setFrozen(j, true, direction: direction)
            case .resolved(let slot):
                let (j, direction) = filterAndDirection(ofSlot: slot)
                bank.setFrozen(j, false, direction: direction)
                guard var a = active.removeValue(forKey: slot) else { continue }
                a.status = .resolved
                a.endsAt = now
                a.resent = nil
                a.exceedances = tracker.exceedances(inLastWindowOf: slot, at: bank.rows)
                out.append(a)
            case .modelFired(_, let statistic):
                out.append(AlertMessage(
                    status: .firing,
                    labels: ["alertname": "ModelShift", "model": model, "layer": Topic.modelLevelLayer, "severity": "critical"],
                    annotations: [
                        "summary": "\(model): predictions with many extreme filters became more frequent than under the reference (CUSUM \(Float(statistic)))",
                        "description": "Domain shift suspected. Top filters: saliencyctl top --model \(model)",
                    ],
                    startsAt: now, model: model, filter: nil, layer: Topic.modelLevelLayer, channel: nil, score: statistic, p: nil,
                    threshold: nil, extreme_threshold: nil, exceedances: nil, window: nil, value: nil))
            case .modelResolved:
                guard var a = modelAlert else { continue }
                modelAlert = nil
                a.status = .resolved
                a.endsAt = now
                a.resent = nil
                out.append(a)
            case .modelCalibrated(let c):
                calibrated = c
            }
        }
        return (out, calibrated)
    }

    /// Records a published firing alert (with its `seq`) as active, for re-sends and `alerts --active`.
    func published(_ a: AlertMessage) {
        guard a.status == .firing else { return }
        if let f = a.filter {
            let direction = TailDirection(rawValue: a.labels["direction"] ?? "upper") ?? .upper
            active[slot(filter: f, direction: direction) ?? f] = a
        } else { modelAlert = a }
    }

    /// Firing alerts, oldest first (re-sends, `alerts --active`).
    var firingAlerts: [AlertMessage] {
        active.values.sorted { $0.seq < $1.seq } + (modelAlert.map { [$0] } ?? [])
    }
}

// MARK: - Queries

extension ModelEngine {
    /// `calibration` is ignored: a model reports its own (`[models.NAME] calibration` may differ
    /// from `[pot]`'s); the parameter stays for the callers.
    func statusEntry(uptimeSeconds secs: Double, statusLayers: Int) -> StatusReply.Model {
        let calibration = bank.configuration.calibration
        let (phase, seen, total): (String, Int, Int) = switch bank.phase {
        case .calibrating(let s, let of): ("calibrating", s, of)
        case .monitoring: ("monitoring", calibration, calibration)
        }
        var byLayer: [String: UInt64] = [:]
        var other: UInt64 = 0
        let ranked = layerExtremes.indices.filter { layerExtremes[$0] > 0 }.sorted { layerExtremes[$0] > layerExtremes[$1] }
        for (r, i) in ranked.enumerated() {
            if r < statusLayers { byLayer[schema.layers[i].name] = layerExtremes[i] } else { other &+= layerExtremes[i] }
        }
        return StatusReply.Model(
            model: schema.model, fingerprint: SchemaMessage.hex(fingerprint), filters: filterCount, layers: schema.layers.count,
            phase: phase, calibration_seen: seen, calibration_total: total, rows: bank.rows, rows_since_start: acceptedSinceStart,
            rate_per_s: secs > 0 ? Double(acceptedSinceStart) / secs : 0, firing: active.count, model_alert: modelAlert != nil,
            refits: bank.refitCount, due: bank.isCalibrated ? bank.dueCount : 0,
            alert_rule: .init(window: tracker.rule.window, fire_count: tracker.rule.fireCount, resolve_below: tracker.rule.resolveBelow),
            rejected_rows: Dictionary(uniqueKeysWithValues: bank.rejected.map { ($0.key.rawValue, $0.value) }),
            extremes_by_layer: byLayer, extremes_other_layers: other, max_bytes: maximumBytes, peak_stride: bank.peakStride,
            max_refit_lag_rows: bank.maxRefitLagRows, quantity: schema.quantityName, model_rule: modelRuleStatus,
            tails: configuration.tails.rawValue, transform: configuration.transform.rawValue, q: configuration.q)
    }

    /// The model-level rule's state for `status` (docs/alerting.md §4).
    var modelRuleStatus: StatusReply.ModelRule {
        let m = tracker.rule.model
        guard m.isEnabled else { return .init(state: "off") }
        if let c = tracker.modelCalibration {
            return .init(state: "armed", source: c.source.rawValue, row_threshold: c.rowThreshold, null_rate: c.nullRate, null_rows: c.burnInRows)
        }
        if !bank.isCalibrated { return .init(state: "waiting", source: m.nullSample.rawValue) }
        return .init(state: "burning_in", source: ModelShiftNullSample.burnIn.rawValue, burn_in_seen: tracker.modelBurnInRows, burn_in_total: m.burnIn)
    }

    func top(k: Int, by asked: ScoreKind, window: QueryRequest.Window) throws(SaliencyError) -> TopReply {
        let by = try resolve(asked)
        guard bank.isCalibrated else {
            throw SaliencyError(.notReady, "model '\(schema.model)' is calibrating (\(bank.rows)/\(bank.configuration.calibration)); top is available once calibration completes")
        }
        let n: Int
        switch window {
        case .latest: n = 1
        case .recent(let m): n = m
        }
        if window == .latest, latestRow == nil { throw SaliencyError(.notReady, "no prediction yet") }
        return try withRecentBankRows(n) { (rows: [UnsafeBufferPointer<Float>]) throws(SaliencyError) -> TopReply in
            let ranked: [RankedFilter]
            let newest: UnsafeBufferPointer<Float>?
            switch window {
            case .latest:
                let row = latestBankRow!
                ranked = bank.top(row, k: k, by: by, newest: true)
                newest = row
            case .recent:
                ranked = bank.top(rows: rows, k: k, by: by)
                newest = nil
            }
            let used = window == .latest ? 1 : rows.count
            let twoSided = configuration.tails != .upper && by.tailModel == .pot
            return TopReply(model: schema.model, by: by.rawValue, window: used, top: ranked.map { r in
                let (layer, channel) = layerName(of: r.filter)
                var direction: String? = nil
                if twoSided {
                    if let row = newest {
                        direction = bank.direction(filter: r.filter, value: row[r.filter], newest: true).rawValue
                    } else {
                        // A window: the tail whose mean score over the window is the larger.
                        var up = 0.0, lo = 0.0
                        for row in rows {
                            up += POT.score(p: bank.upperTailProbability(filter: r.filter, value: row[r.filter]))
                            lo += POT.score(p: bank.lowerTailProbability(filter: r.filter, value: row[r.filter]))
                        }
                        direction = (configuration.tails == .lower || lo > up ? TailDirection.lower : .upper).rawValue
                    }
                }
                return TopReply.Entry(filter: r.filter, layer: layer, channel: channel, score: r.score, p: r.p, direction: direction)
            })
        }
    }

    func filter(_ selector: QueryRequest.FilterSelector) throws(SaliencyError) -> FilterReply {
        let j: Int
        switch selector {
        case .index(let i):
            guard i >= 0, i < filterCount else { throw SaliencyError(.notFound, "filter \(i) out of range 0..<\(filterCount)") }
            j = i
        case .channel(let layer, let channel):
            guard let l = schema.layerIndex(named: layer) else { throw SaliencyError(.notFound, "no layer '\(layer)' in '\(schema.model)'") }
            guard channel >= 0, channel < schema.layers[l].filters else { throw SaliencyError(.notFound, "layer '\(layer)' has channels 0..<\(schema.layers[l].filters)") }
            j = schema.globalIndex(layer: l, channel: channel)
        }
        let rep = bank.report(filter: j)
        let (layer, channel) = layerName(of: j)
        var recent: [FilterReply.Recent] = []
        if bank.isCalibrated {
            let bankRows: [[Float]] = try withRecentBankRows(16) { (rows: [UnsafeBufferPointer<Float>]) throws(SaliencyError) -> [[Float]] in rows.map { Array($0) } }
            for (back, row) in bankRows.enumerated() {
                let (p, direction) = bank.tail(filter: j, value: row[j], newest: back == 0)
                recent.append(.init(value: Double(row[j]), score: POT.score(p: p), p: p, zscore: bank.zScore(filter: j, value: row[j]),
                                    direction: configuration.tails == .upper ? nil : direction.rawValue))
            }
        }
        var lower: FilterReply.LowerTail? = nil
        if let lo = bank.lowerReport(filter: j) {
            let s = slot(filter: j, direction: .lower) ?? j
            lower = .init(tail: lo.tail.rawValue, threshold: lo.threshold, extreme_threshold: lo.extremeThreshold, shape: lo.shape, scale: lo.scale,
                          n: lo.n, peaks: lo.peaks, extremes: lo.extremes, zero_mode: "\(lo.zeroMode)", calibration_zeros: lo.calibrationZeros,
                          zeros: lo.zeros, zero_run: lo.zeroRun, zero_run_threshold: lo.zeroRunThreshold, firing: tracker.isFiring(s),
                          window_exceedances: bank.isCalibrated ? tracker.exceedances(inLastWindowOf: s, at: bank.rows) : 0)
        }
        let upperSlot = slot(filter: j, direction: .upper)
        var reply = FilterReply(model: schema.model, filter: j, layer: layer, channel: channel, tail: rep.tail.rawValue, threshold: rep.threshold,
                           extreme_threshold: rep.extremeThreshold, shape: rep.shape, scale: rep.scale, n: rep.n, peaks: rep.peaks,
                           peaks_in_ring: rep.peaksInRing, peaks_since_fit: rep.peaksSinceFit, due: rep.due, extremes: rep.extremes,
                           mean: rep.mean, std: rep.standardDeviation, firing: upperSlot.map { tracker.isFiring($0) } ?? false,
                           window_exceedances: bank.isCalibrated ? upperSlot.map { tracker.exceedances(inLastWindowOf: $0, at: bank.rows) } ?? 0 : 0,
                           recent: recent)
        reply.lower = lower
        return reply
    }
}
