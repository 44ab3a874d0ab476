import EVTOnline
import Foundation
import Logging
import SaliencyCore
import SaliencyStream

/// The daemon's logic without sockets: frames in, alerts and replies out. The engine thread owns
/// it (not Sendable); tests drive it directly.
final class DaemonCore {
    private(set) var configuration: DaemonConfiguration
    let logger: Logger
    let metrics: DaemonMetrics
    let startedAt = ContinuousClock.now
    let startedWall = Date()

    var engines: [UInt64: ModelEngine] = [:]
    var byName: [String: UInt64] = [:]
    /// Rejected input by reason (docs/protocol.md §2, §4).
    var rejected: [RejectReason: UInt64] = [:]
    struct Producer {
        var model: String; var lastSequence: UInt64; var gaps: UInt64; var reordered: UInt64; var received: UInt64
        /// Feed tick of the last accepted row (least recently seen producers are forgotten first).
        var lastSeen: UInt64 = 0
    }
    var producers: [UInt64: Producer] = [:]
    /// Accepted rows since start, as a clock for `Producer.lastSeen`.
    var feedTick: UInt64 = 0
    var gapsTotal: UInt64 = 0
    var queries: UInt64 = 0
    /// Memory admitted models may claim (`ModelEngine.maximumBytes` summed; docs/security.md).
    var admittedBytes = 0
    var modelsExpired: UInt64 = 0
    /// Which CURVE client keys may announce which models (`security.schema_keys_file`); nil: any.
    var schemaKeys: SchemaKeys?
    let logLimiter: LogLimiter

    /// Alerts ready to publish: (topic, JSON). The loop drains it after each message.
    var outbox: [(topic: [UInt8], body: [UInt8])] = []
    let alertLog: AlertLog
    var lastResend = ContinuousClock.now
    /// Alertmanager delivery (`[alertmanager]`), when configured; `publish` hands it every alert
    /// and `resendIfDue` the firing set every `alertmanager.resend_interval`.
    var forwarder: AlertmanagerForwarder?
    var lastAlertmanagerSync: ContinuousClock.Instant?
    /// Arrival-to-publish latency of the last alert-carrying messages, in microseconds (ring of 4096).
    var alertLatencies: [Double] = []
    var alertLatencyNext = 0
    func recordAlertLatency(_ us: Double) {
        if alertLatencies.count < 4096 { alertLatencies.append(us) } else { alertLatencies[alertLatencyNext] = us }
        alertLatencyNext = (alertLatencyNext + 1) % 4096
        metrics.alertLatency(microseconds: us)
    }
    /// Called when calibration progress or phase changes, for the systemd STATUS line.
    var statusDirty = true

    init(configuration: DaemonConfiguration, alertLog: AlertLog, logger: Logger, metrics: DaemonMetrics, schemaKeys: SchemaKeys? = nil) {
        self.configuration = configuration
        self.alertLog = alertLog
        self.logger = logger
        self.metrics = metrics
        self.schemaKeys = schemaKeys
        self.logLimiter = LogLimiter(burst: configuration.monitor.logBurst)
        let m = metrics
        logLimiter.onSuppressed = { m.logSuppressed($0) }
        metrics.budget(used: 0, limit: configuration.limits.maxTotalBytes)
        metrics.snapshotSettings(interval: configuration.state.snapshotInterval)
    }

    /// Applies the settings a reload may change (`restartRequired` lists the others).
    func apply(reloaded c: DaemonConfiguration) {
        configuration.alerts.resendInterval = c.alerts.resendInterval
        configuration.alerts.logMaxEntries = c.alerts.logMaxEntries
        configuration.alertmanager = c.alertmanager
        configuration.state.snapshotInterval = c.state.snapshotInterval
        configuration.monitor.logLevel = c.monitor.logLevel
        configuration.monitor.logBurst = c.monitor.logBurst
        configuration.limits.maxModelBytes = c.limits.maxModelBytes
        configuration.limits.maxTotalBytes = c.limits.maxTotalBytes
        configuration.limits.maxLayers = c.limits.maxLayers
        configuration.limits.calibratingIdleExpiry = c.limits.calibratingIdleExpiry
        configuration.limits.idleExpiry = c.limits.idleExpiry
        configuration.limits.layoutChange = c.limits.layoutChange
        configuration.idleRefits = c.idleRefits
        logLimiter.setBurst(c.monitor.logBurst)
        metrics.budget(used: admittedBytes, limit: configuration.limits.maxTotalBytes)
        metrics.snapshotSettings(interval: configuration.state.snapshotInterval)
    }

    /// Counts rejected input by reason (a code-defined string, never peer bytes) and logs it,
    /// rate-limited per reason.
    func reject(_ reason: RejectReason, _ message: @autoclosure () -> String) {
        rejected[reason, default: 0] += 1
        metrics.rejected(reason)
        logLimiter.log(logger, .warning, kind: "rejected \(reason.rawValue)", "rejected input",
                       metadata: ["reason": "\(reason.rawValue)", "count": "\(rejected[reason] ?? 0)", "detail": "\(message())"])
    }

    // MARK: - Feed

    /// One multipart message from the feed socket: `count` frames, read through `frame(i)` without
    /// copying. `message`, when given, is the multipart the frames belong to: a valid payload frame
    /// is then moved into the model's window instead of copied (test doubles pass nil).
    /// `userID`: the CURVE client key that sent it (ZAP user id), when CURVE is on.
    func handleFeed(count: Int, message: ZMQMultipart? = nil, userID: @autoclosure () -> String? = nil, _ frame: (Int) -> UnsafeRawBufferPointer) {
        guard count > 0 else { return reject(.malformedFrame, "empty message") }
        let first = frame(0)
        switch Topic.parse(first) {
        case .schema(let model):
            guard count == 2 else { return reject(.malformedFrame, "schema message for '\(model)' has \(count) frames, expected 2") }
            handleSchema(model: model, frame(1), userID: schemaKeys == nil ? nil : userID())
        case .prediction(let model):
            guard count == 3 else { return reject(.malformedFrame, "prediction for '\(model)' has \(count) frames, expected 3 (topic, header, payload)") }
            handlePrediction(model: model, header: frame(1), payload: frame(2), message: message)
        case .unknown:
            reject(.malformedFrame, "unknown topic '\(printable(first.prefix(64)))'")
        }
    }

    /// Admission control (docs/security.md): a schema is decoded with checked arithmetic, its
    /// full cost computed before anything is allocated, and admitted only within the budgets;
    /// a different layout never silently takes a live model's name.
    func handleSchema(model: String, _ raw: UnsafeRawBufferPointer, userID: String? = nil) {
        if let keys = schemaKeys, !keys.allows(key: userID, model: model) {
            return reject(.forbiddenSchema, "schema for '\(model)' from client key \(userID ?? "(none)") refused: security.schema_keys_file does not let that key announce this model")
        }
        let schema: ModelSchema
        do {
            schema = try SchemaMessage.decode(raw, topicModel: model, maxLayers: configuration.limits.maxLayers)
        } catch {
            return reject(.invalidSchema, error.message)
        }
        let limits = configuration.limits
        guard schema.layers.count <= limits.maxLayers else {
            return reject(.invalidSchema, "schema '\(schema.model)' has \(schema.layers.count) layers; limits.max_layers = \(limits.maxLayers)")
        }
        let fp = schema.fingerprint
        if engines[fp] != nil {
            if byName[schema.model] == nil { byName[schema.model] = fp }
            if byName[schema.model] != fp, limits.layoutChange == "replace" { byName[schema.model] = fp }
            return
        }
        if let old = byName[schema.model], old != fp, engines[old] != nil, limits.layoutChange != "replace" {
            return reject(.schemaConflict, "schema '\(schema.model)' with layout \(SchemaMessage.hex(fp)) (\(schema.filterCount) filters) refused: the live model of that name has layout \(SchemaMessage.hex(old)) (\(engines[old]!.filterCount) filters). To move to the new layout, reset the model (query {\"op\":\"reset\"}) or set limits.layout_change = \"replace\"")
        }
        guard engines.count < configuration.monitor.maxModels else {
            return reject(.tooManyModels, "schema '\(schema.model)' refused: monitor.max_models = \(configuration.monitor.maxModels) reached")
        }
        guard let cost = ModelEngine.maximumBytes(schema: schema, configuration: configuration) else {
            return reject(.overBudget, "schema '\(schema.model)' (\(schema.filterCount) filters): its state size overflows")
        }
        guard cost <= limits.maxModelBytes else {
            return reject(.overBudget, "schema '\(schema.model)' (\(schema.filterCount) filters) would claim up to \(cost) bytes; limits.max_model_bytes = \(limits.maxModelBytes) (raise it, or lower pot.calibration / pot.max_peaks)")
        }
        guard admittedBytes + cost <= limits.maxTotalBytes else {
            return reject(.overBudget, "schema '\(schema.model)' (\(schema.filterCount) filters) would claim up to \(cost) bytes; admitted models already hold \(admittedBytes) of limits.max_total_bytes = \(limits.maxTotalBytes)")
        }
        do {
            // The model's own settings: [pot] with its [models.NAME] table on top.
            let pot = configuration.pot(for: schema.model)
            let engine = try ModelEngine(schema: schema, pot: pot, budget: configuration.alerting, safetyFactor: configuration.alertSafetyFactor, modelBurnIn: configuration.modelBurnIn, modelNullSample: configuration.modelNullSample, recentRows: configuration.monitor.recentRows,
                                         rule: try alertRule(filters: schema.filterCount, q: pot.q))
            admit(engine)
            if let old = byName[schema.model], old != fp {
                logLimiter.log(logger, .warning, kind: "schema changed", "model schema changed; the new layout starts calibrating from zero (limits.layout_change = \"replace\")", metadata: ["model": "\(schema.model)", "old": "\(SchemaMessage.hex(old))", "new": "\(SchemaMessage.hex(fp))"])
            }
            byName[schema.model] = fp
            logLimiter.log(logger, .notice, kind: "model registered", "model registered; calibrating", metadata: [
                "model": "\(schema.model)", "filters": "\(schema.filterCount)", "layers": "\(schema.layers.count)",
                "fingerprint": "\(SchemaMessage.hex(fp))", "calibration": "\(pot.calibration)",
                "tails": "\(pot.tails.rawValue)", "transform": "\(pot.transform.rawValue)", "q": "\(pot.q)",
                "settings": "\(configuration.settingsSource(for: schema.model))",
                "alert_window": "\(engine.tracker.rule.window)", "alert_count": "\(engine.tracker.rule.fireCount)",
                "max_bytes": "\(cost)",
            ])
        } catch {
            reject(.invalidSchema, "schema '\(schema.model)': \(error.message)")
        }
    }

    /// The alert rule for a model of `filters` filters at risk `q` (the model's own, which a
    /// `[models.NAME]` table may set). Designing one costs O(16 · m · c) (~25 ms at m = 10,000),
    /// so designs are remembered per (filter count, q) (at most 64; the other settings they
    /// depend on are daemon-wide and need a restart to change).
    func alertRule(filters: Int, q: Double) throws(SaliencyError) -> AlertRule {
        let key = RuleKey(filters: filters, q: q)
        if let r = ruleCache[key] { return r }
        let r = try AlertRule.design(filters: filters, q: q, budget: configuration.alerting,
                                     safetyFactor: configuration.alertSafetyFactor, model: configuration.modelShiftRule)
        if ruleCache.count >= 64 { ruleCache.removeAll(keepingCapacity: true) }
        ruleCache[key] = r
        return r
    }
    private struct RuleKey: Hashable { var filters: Int; var q: Double }
    private var ruleCache: [RuleKey: AlertRule] = [:]

    /// Adds an engine (new or restored) and charges its cost to the budget.
    func admit(_ engine: ModelEngine) {
        engines[engine.fingerprint] = engine
        admittedBytes += engine.maximumBytes
        metrics.budget(used: admittedBytes, limit: configuration.limits.maxTotalBytes)
        metrics.admitted(engine)
        statusDirty = true
    }

    /// Forgets a model: its learned state, its name (if it still points at it), its metric series.
    func remove(_ fp: UInt64) {
        guard let e = engines.removeValue(forKey: fp) else { return }
        if byName[e.schema.model] == fp {
            byName[e.schema.model] = engines.values.first { $0.schema.model == e.schema.model }?.fingerprint
        }
        admittedBytes -= e.maximumBytes
        if !engines.values.contains(where: { $0.schema.model == e.schema.model }) { metrics.forget(model: e) }
        metrics.budget(used: admittedBytes, limit: configuration.limits.maxTotalBytes)
        statusDirty = true
    }

    /// Forgets models nobody fed for the configured time (`limits.calibrating_idle_expiry` while
    /// calibrating, `limits.idle_expiry` once calibrated; 0 = never). Returns how many.
    @discardableResult
    func expireIdleModels(now: ContinuousClock.Instant = .now) -> Int {
        let l = configuration.limits
        var gone: [UInt64] = []
        for (fp, e) in engines {
            let limit = e.isCalibrated ? l.idleExpiry : l.calibratingIdleExpiry
            guard limit > 0 else { continue }
            let idle = now - (e.lastArrival ?? e.registeredAt)
            if idle >= .milliseconds(Int64(limit * 1000)) { gone.append(fp) }
        }
        for fp in gone {
            guard let e = engines[fp] else { continue }
            let calibrated = e.isCalibrated
            logLimiter.log(logger, .notice, kind: "model expired", "model expired: no accepted prediction for \(calibrated ? l.idleExpiry : l.calibratingIdleExpiry) s; its state is forgotten", metadata: [
                "model": "\(e.schema.model)", "fingerprint": "\(SchemaMessage.hex(fp))", "rows": "\(e.rows)",
                "phase": "\(calibrated ? "monitoring" : "calibrating")", "setting": "\(calibrated ? "limits.idle_expiry" : "limits.calibrating_idle_expiry")",
            ])
            remove(fp)
            modelsExpired &+= 1
            metrics.modelExpired()
        }
        return gone.count
    }

    func handlePrediction(model: String, header raw: UnsafeRawBufferPointer, payload: UnsafeRawBufferPointer,
                          message: ZMQMultipart? = nil) {
        let header: PredictionHeader
        do {
            header = try PredictionHeader.decode(raw)
        } catch {
            return reject(RejectReason(header: error), "prediction for '\(model)': \(error.message)")
        }
        guard let engine = engines[header.fingerprint] else {
            return reject(.unknownSchema, "prediction for '\(model)' has fingerprint \(SchemaMessage.hex(header.fingerprint)), which no schema message declared; producers send schema.<model> first")
        }
        guard engine.schema.model == model else {
            return reject(.topicMismatch, "topic says model '\(model)' but the fingerprint belongs to '\(engine.schema.model)'")
        }
        if let why = PayloadCheck.validate(payload, expectedCount: engine.filterCount) {
            // A rejected row is not a row lost upstream: it advances its producer's sequence, but
            // only when it is exactly the next one, so a forged frame (any id, any sequence
            // number) can neither register a producer nor move one's sequence state.
            if var p = producers[header.producerID], header.sequence == p.lastSequence &+ 1 {
                p.lastSequence = header.sequence
                producers[header.producerID] = p
            }
            return reject(RejectReason(why), "prediction \(header.sequence) from producer \(String(header.producerID, radix: 16)) for '\(model)': \(why.rawValue) (payload \(payload.count) bytes, expected \(4 * engine.filterCount) finite non-negative float32)")
        }
        // Bookkeeping for rows that are scored (rejected ones: above).
        trackSequence(header, model: model)
        let started = ContinuousClock.now
        engine.lastArrival = started
        let wasCalibrated = engine.isCalibrated
        // Zero-copy when the frame can be retained: the window keeps the payload where libzmq put it.
        let result: FilterBank.RowResult
        if let message {
            result = engine.absorb(retaining: { ring, slot in message.move(frame: 2, to: ring, slot: slot) })
        } else {
            result = engine.absorb(copying: payload)
        }
        metrics.accepted(model: engine, result: result)
        if result.calibrated {
            statusDirty = true
            logger.notice("calibration complete; monitoring", metadata: ["model": "\(model)", "rows": "\(engine.rows)", "fits": "\(result.refits)"])
        } else if !wasCalibrated {
            let seen = engine.rows
            let total = UInt64(engine.configuration.calibration)
            if seen % max(1, total / 10) == 0 {
                statusDirty = true
                logger.info("calibrating", metadata: ["model": "\(model)", "progress": "\(seen)/\(total)"])
            }
        }
        if let why = engine.crossFitFailure {
            engine.crossFitFailure = nil
            logLimiter.log(logger, .warning, kind: "model-level cross-fit failed", "the model-level rule could not cross-fit its null sample on the calibration rows; it burns in for [alerting] model_burn_in predictions instead (model alerts are off meanwhile)", metadata: ["model": "\(model)", "error": "\(why)", "burn_in": "\(engine.tracker.rule.model.burnIn)"])
        }
        if !engine.events.isEmpty, let row = engine.latestRow {
            let (alerts, modelCalibrated) = engine.alerts(at: AlertMessage.now(), row: row)
            for var a in alerts {
                publish(&a)
                engine.published(a)
            }
            if let c = modelCalibrated {
                logger.info("model-level shift rule calibrated", metadata: ["model": "\(model)", "source": "\(c.source.rawValue)", "null_rows": "\(c.burnInRows)", "row_threshold": "\(c.rowThreshold)", "estimated_rate": "\(c.estimatedRate)", "null_rate": "\(c.nullRate)"])
            }
        }
        metrics.latency(ContinuousClock.now - started)
    }

    /// Sequence bookkeeping of an accepted row: gaps (drops upstream) and reordering per producer.
    /// The table holds at most `limits.max_producers` ids; the least recently seen is forgotten.
    func trackSequence(_ h: PredictionHeader, model: String) {
        feedTick &+= 1
        if var p = producers[h.producerID] {
            if h.sequence == p.lastSequence &+ 1 {
                p.lastSequence = h.sequence
            } else if h.sequence > p.lastSequence {
                let missing = h.sequence - p.lastSequence - 1
                p.gaps &+= missing
                gapsTotal &+= missing
                metrics.gaps(missing, model: model)
                logLimiter.log(logger, .warning, kind: "sequence gap", "sequence gap: predictions lost upstream", metadata: ["producer": "\(String(h.producerID, radix: 16))", "model": "\(model)", "missing": "\(missing)", "at": "\(h.sequence)"])
                p.lastSequence = h.sequence
            } else {
                p.reordered &+= 1
            }
            p.received &+= 1
            p.lastSeen = feedTick
            producers[h.producerID] = p
        } else {
            if producers.count >= configuration.limits.maxProducers,
               let victim = producers.min(by: { $0.value.lastSeen < $1.value.lastSeen })?.key {
                producers[victim] = nil
                logLimiter.log(logger, .info, kind: "producer forgotten", "producer table full (limits.max_producers); forgot the least recently seen producer",
                               metadata: ["producer": "\(String(victim, radix: 16))", "max_producers": "\(configuration.limits.maxProducers)"])
            }
            producers[h.producerID] = Producer(model: model, lastSequence: h.sequence, gaps: 0, reordered: 0, received: 1, lastSeen: feedTick)
            logLimiter.log(logger, .info, kind: "new producer", "new producer", metadata: ["producer": "\(String(h.producerID, radix: 16))", "model": "\(model)", "sequence": "\(h.sequence)"])
        }
    }

    // MARK: - Alerts

    /// Numbers an alert (`seq`), appends it to the durable log, then queues it for the PUB socket.
    func publish(_ a: inout AlertMessage) {
        a.seq = alertLog.nextSequence
        let body = a.json()
        do {
            try alertLog.append(seq: a.seq, json: body)
        } catch {
            metrics.alertLogFailure()
            logLimiter.log(logger, .error, kind: "alert log failure", "alert log append failed; the alert is published but not retained (alerts --since will not serve it)", metadata: ["seq": "\(a.seq)", "error": "\(error.message)", "failures": "\(alertLog.failures)"])
        }
        let status: Topic.AlertStatus = a.status == .firing ? .firing : .resolved
        outbox.append((Topic.alert(status: status, model: a.model, layer: a.layer), body))
        metrics.alert(status: a.status.rawValue, model: a.model)
        if let f = forwarder, !f.submit(a) {
            logLimiter.log(logger, .warning, kind: "alertmanager queue full", "Alertmanager queue full (alertmanager.queue_capacity); alert dropped from delivery. A firing one is re-sent at the next alertmanager.resend_interval", metadata: ["seq": "\(a.seq)", "model": "\(a.model)"])
        }
        logLimiter.log(logger, .notice, kind: "alert \(a.status.rawValue)", "alert \(a.status.rawValue)", metadata: ["seq": "\(a.seq)", "model": "\(a.model)", "layer": "\(a.layer)", "filter": "\(a.filter.map(String.init) ?? "-")"])
    }

    /// Re-sends firing alerts every `resend_interval` seconds (same seq, `resent: true`).
    func resendIfDue(now: ContinuousClock.Instant) {
        if let f = forwarder, lastAlertmanagerSync.map({ now - $0 >= .seconds(configuration.alertmanager.resendInterval) }) ?? true {
            lastAlertmanagerSync = now
            f.sync(engines.values.flatMap(\.firingAlerts))
        }
        guard now - lastResend >= .seconds(configuration.alerts.resendInterval) else { return }
        lastResend = now
        for engine in engines.values {
            for var a in engine.firingAlerts {
                a.resent = true
                outbox.append((Topic.alert(status: .firing, model: a.model, layer: a.layer), a.json()))
            }
        }
    }

    // MARK: - Periodic metrics

    /// Per-layer extreme counts and the top-10 POT scores of each model's latest prediction
    /// (every 5 s; O(K log 10) per model).
    func publishPeriodicMetrics() {
        for e in engines.values {
            metrics.publishLayers(e)
            let scores = e.topScores(DaemonMetrics.topRanks)
            if !scores.isEmpty { metrics.publishTop(model: e.schema.model, scores: scores) }
        }
    }

    // MARK: - Idle work

    /// Refits due filters when the feed is quiet. Returns the number refit.
    func idleRefits(limit: Int) -> Int {
        var done = 0
        for e in engines.values where e.isCalibrated {
            done += e.refitDue(limit: limit - done)
            if done >= limit { break }
        }
        return done
    }

    /// A one-line status for systemd and logs.
    var statusLine: String {
        if engines.isEmpty { return "waiting for schema messages" }
        return engines.values.sorted { $0.schema.model < $1.schema.model }.map { e in
            switch e.phase {
            case .calibrating(let seen, let of): "\(e.schema.model): calibrating \(seen)/\(of)"
            case .monitoring: "\(e.schema.model): monitoring, \(e.active.count) firing"
            }
        }.joined(separator: "; ")
    }
}

/// Peer bytes made safe for a log line: printable ASCII kept, everything else as `\xNN`.
func printable(_ bytes: some Collection<UInt8>) -> String {
    var out = ""
    for b in bytes {
        if b >= 0x20 && b < 0x7F && b != UInt8(ascii: "\\") { out.unicodeScalars.append(Unicode.Scalar(b)) } else {
            let h = Array("0123456789abcdef".unicodeScalars)
            out += "\\x"; out.unicodeScalars.append(h[Int(b >> 4)]); out.unicodeScalars.append(h[Int(b & 15)])
        }
    }
    return out
}

extension AlertMessage {
    /// Now, as RFC 3339 UTC with milliseconds, without Foundation formatters (hot alert path).
    static func now() -> String { DaemonLogHandler.timestamp() }
}

extension Error {
    var message: String { (self as? SaliencyError)?.message ?? "\(self)" }
    var code: SaliencyError.Code { (self as? SaliencyError)?.code ?? .invalidInput }
}
