import EVTOnline
import Foundation
import SaliencyCore
import SaliencyStream

/// Answers to REP queries (docs/protocol.md §4). Every failure is a JSON error with a code.
extension DaemonCore {
    struct TopEntry: Codable { var filter: Int; var layer: String; var channel: Int; var score: Double; var p: Double? }
    struct TopReply: Codable { var ok = true; var model: String; var by: String; var window: Int; var top: [TopEntry] }
    struct RuleInfo: Codable { var window: Int; var fire_count: Int; var resolve_below: Int }
    struct ModelStatus: Codable {
        var model: String; var fingerprint: String; var filters: Int; var layers: Int
        var phase: String; var calibration_seen: Int; var calibration_total: Int
        var rows: UInt64; var rows_since_start: UInt64; var rate_per_s: Double
        var firing: Int; var model_alert: Bool; var refits: UInt64; var due: Int
        var alert_rule: RuleInfo; var rejected_rows: [String: UInt64]
        /// Extreme exceedances of the (at most 32) layers with the most, and the sum of the rest.
        var extremes_by_layer: [String: UInt64]
        var extremes_other_layers: UInt64
        /// The most memory this model may claim (its charge against limits.max_total_bytes).
        var max_bytes: Int
        /// Ring sampling stride m (every m-th peak enters a filter's ring; docs/statistics.md).
        var peak_stride: Int
        /// Upper bound on rows between a filter becoming due and its refit (nil: idle refits only).
        var max_refit_lag_rows: Int?
    }
    struct ProducerStatus: Codable { var producer: String; var model: String; var received: UInt64; var gaps: UInt64; var reordered: UInt64; var last_sequence: UInt64 }
    struct StatusReply: Codable {
        var ok = true; var version: String; var uptime_s: Double; var models: [ModelStatus]
        var rejected: [String: UInt64]; var gaps: UInt64; var producers: [ProducerStatus]
        var firing: Int; var alert_seq: UInt64; var queries: UInt64
        var state_directory: String; var last_snapshot: String?
        /// Instruction set of the FilterBank kernels on this CPU ("avx2", "sse2", "generic").
        var kernels: String
        /// Arrival of an alert-triggering prediction → its alerts sent on PUB, µs (last ≤ 4096 such messages).
        var alert_latency_us: [String: Double]
        /// Producers tracked (≤ limits.max_producers); `producers` lists the 32 most recently seen.
        var producer_count: Int
        var limits: LimitsStatus
        var persistence: PersistenceStatus
        /// Log lines suppressed by the per-kind rate limit (monitor.log_burst).
        var log_suppressed: UInt64
        var models_expired: UInt64
    }
    struct LimitsStatus: Codable {
        var admitted_bytes: Int; var max_total_bytes: Int; var max_model_bytes: Int; var max_models: Int
        var max_layers: Int; var max_producers: Int
    }
    struct PersistenceStatus: Codable {
        var alert_log_failures: UInt64; var alert_log_error: String?
        var snapshot_failures: UInt64; var snapshot_error: String?
    }
    /// Producers listed by `status` (the rest are counted in `producer_count`).
    static let statusProducers = 32
    static let statusLayers = 32
    struct RecentScore: Codable { var value: Double; var score: Double; var p: Double; var zscore: Double }
    struct FilterReply: Codable {
        var ok = true; var model: String; var filter: Int; var layer: String; var channel: Int
        var tail: String; var threshold: Double; var extreme_threshold: Double; var shape: Double; var scale: Double
        var n: UInt64; var peaks: UInt64; var peaks_in_ring: Int; var peaks_since_fit: Int; var due: Bool
        var extremes: UInt64; var mean: Double; var std: Double; var firing: Bool; var window_exceedances: Int
        var recent: [RecentScore]
    }

    static let version = "0.1.0"

    /// Handles one request. `admin`: whether the client may change state (CURVE admin list, or no CURVE).
    func handleQuery(_ raw: UnsafeRawBufferPointer, admin: Bool, snapshot: () -> Result<String, SaliencyError>, lastSnapshot: String?,
                     snapshotHealth: (failures: UInt64, error: String?) = (0, nil)) -> [UInt8] {
        let reply = answer(raw, admin: admin, snapshot: snapshot, lastSnapshot: lastSnapshot, snapshotHealth: snapshotHealth)
        guard reply.count <= configuration.query.maxReplyBytes else {
            return QueryReply.error(code: .tooLarge, message: "the reply would be \(reply.count) bytes; query.max_reply_bytes = \(configuration.query.maxReplyBytes) (ask for less: a smaller k, or alerts with since)")
        }
        return reply
    }

    private func answer(_ raw: UnsafeRawBufferPointer, admin: Bool, snapshot: () -> Result<String, SaliencyError>, lastSnapshot: String?,
                        snapshotHealth: (failures: UInt64, error: String?)) -> [UInt8] {
        queries &+= 1
        let request: QueryRequest
        do {
            request = try QueryRequest.parse(raw)
        } catch {
            reject("bad_query", error.message)
            return QueryReply.error(error)
        }
        if request.isAdmin && !admin {
            reject("forbidden_query", "state-changing query from a non-admin client")
            return QueryReply.error(code: .forbidden, message: "this query changes state; the client's CURVE key is not on security.admin_clients_file")
        }
        do {
            switch request {
            case .status:
                return try encode(status(lastSnapshot: lastSnapshot, snapshotHealth: snapshotHealth))
            case .top(let model, let k, let by, let window):
                return try encode(top(model: model, k: k, by: by, window: window))
            case .filter(let model, let selector):
                return try encode(filter(model: model, selector: selector))
            case .alerts(let since, let active):
                return try alerts(since: since, active: active)
            case .snapshot:
                switch snapshot() {
                case .success(let path): return Array("{\"ok\":true,\"snapshot\":\(jsonString(path))}".utf8)
                case .failure(let e): throw e
                }
            case .reset(let model):
                guard let fp = byName[model], let e = engines[fp] else { throw SaliencyError(.notFound, "no model '\(model)'; status lists the models") }
                remove(fp)
                logger.warning("model state reset by query; it recalibrates when its schema arrives again", metadata: ["model": "\(model)", "rows_forgotten": "\(e.bank.rows)"])
                statusDirty = true
                return Array("{\"ok\":true,\"reset\":\(jsonString(model))}".utf8)
            }
        } catch let e as SaliencyError {
            return QueryReply.error(e)
        } catch {
            return QueryReply.error(code: .badRequest, message: "\(error)")
        }
    }

    func engine(_ model: String) throws(SaliencyError) -> ModelEngine {
        guard let fp = byName[model], let e = engines[fp] else {
            let known = byName.keys.sorted().joined(separator: ", ")
            throw SaliencyError(.notFound, "no model '\(model)'" + (known.isEmpty ? "; no schema has arrived yet" : "; known: \(known)"))
        }
        return e
    }

    func status(lastSnapshot: String?, snapshotHealth: (failures: UInt64, error: String?) = (0, nil)) -> StatusReply {
        let uptime = ContinuousClock.now - startedAt
        let secs = Double(uptime.components.seconds) + Double(uptime.components.attoseconds) * 1e-18
        let models = engines.values.sorted { $0.schema.model < $1.schema.model }.map { e -> ModelStatus in
            let (phase, seen, total): (String, Int, Int) = switch e.bank.phase {
            case .calibrating(let s, let of): ("calibrating", s, of)
            case .monitoring: ("monitoring", configuration.pot.calibration, configuration.pot.calibration)
            }
            var byLayer: [String: UInt64] = [:]
            var other: UInt64 = 0
            let ranked = e.layerExtremes.indices.filter { e.layerExtremes[$0] > 0 }.sorted { e.layerExtremes[$0] > e.layerExtremes[$1] }
            for (r, i) in ranked.enumerated() {
                if r < Self.statusLayers { byLayer[e.schema.layers[i].name] = e.layerExtremes[i] } else { other &+= e.layerExtremes[i] }
            }
            return ModelStatus(
                model: e.schema.model, fingerprint: SchemaMessage.hex(e.fingerprint), filters: e.filterCount, layers: e.schema.layers.count,
                phase: phase, calibration_seen: seen, calibration_total: total, rows: e.bank.rows, rows_since_start: e.acceptedSinceStart,
                rate_per_s: secs > 0 ? Double(e.acceptedSinceStart) / secs : 0, firing: e.active.count, model_alert: e.modelAlert != nil,
                refits: e.bank.refitCount, due: e.bank.isCalibrated ? e.bank.dueCount : 0,
                alert_rule: RuleInfo(window: e.tracker.rule.window, fire_count: e.tracker.rule.fireCount, resolve_below: e.tracker.rule.resolveBelow),
                rejected_rows: Dictionary(uniqueKeysWithValues: e.bank.rejected.map { ($0.key.rawValue, $0.value) }),
                extremes_by_layer: byLayer, extremes_other_layers: other, max_bytes: e.maximumBytes, peak_stride: e.bank.peakStride, max_refit_lag_rows: e.bank.maxRefitLagRows)
        }
        let prods = producers.sorted { $0.value.lastSeen > $1.value.lastSeen }.prefix(Self.statusProducers).map { id, p in
            ProducerStatus(producer: String(id, radix: 16), model: p.model, received: p.received, gaps: p.gaps, reordered: p.reordered, last_sequence: p.lastSequence)
        }
        return StatusReply(version: Self.version, uptime_s: secs, models: models, rejected: rejected, gaps: gapsTotal, producers: prods,
                           firing: engines.values.reduce(0) { $0 + $1.active.count + ($1.modelAlert == nil ? 0 : 1) },
                           alert_seq: alertLog.nextSequence - 1, queries: queries,
                           state_directory: configuration.resolvedStateDirectory, last_snapshot: lastSnapshot,
                           kernels: FilterBank.kernelISA,
                           alert_latency_us: latencySummary(),
                           producer_count: producers.count,
                           limits: LimitsStatus(admitted_bytes: admittedBytes, max_total_bytes: configuration.limits.maxTotalBytes,
                                                max_model_bytes: configuration.limits.maxModelBytes, max_models: configuration.monitor.maxModels,
                                                max_layers: configuration.limits.maxLayers, max_producers: configuration.limits.maxProducers),
                           persistence: PersistenceStatus(alert_log_failures: alertLog.failures, alert_log_error: alertLog.lastError,
                                                          snapshot_failures: snapshotHealth.failures, snapshot_error: snapshotHealth.error),
                           log_suppressed: logLimiter.suppressedTotal, models_expired: modelsExpired)
    }

    func latencySummary() -> [String: Double] {
        guard !alertLatencies.isEmpty else { return [:] }
        let v = alertLatencies.sorted()
        func q(_ p: Double) -> Double { v[min(v.count - 1, Int((p * Double(v.count)).rounded(.up)) - 1)] }
        return ["count": Double(v.count), "p50": q(0.5), "p99": q(0.99), "max": v.last!]
    }

    func top(model: String, k: Int, by: ScoreKind, window: QueryRequest.Window) throws(SaliencyError) -> TopReply {
        let e = try engine(model)
        guard e.bank.isCalibrated else {
            throw SaliencyError(.notReady, "model '\(model)' is calibrating (\(e.bank.rows)/\(configuration.pot.calibration)); top is available once calibration completes")
        }
        let ranked: [RankedFilter]
        let used: Int
        switch window {
        case .latest:
            guard let row = e.latestRow else { throw SaliencyError(.notReady, "no prediction yet") }
            ranked = e.bank.top(row, k: k, by: by)
            used = 1
        case .recent(let n):
            let rows = e.recentRows(n)
            ranked = e.bank.top(rows: rows, k: k, by: by)
            used = rows.count
        }
        return TopReply(model: model, by: by.rawValue, window: used, top: ranked.map { r in
            let (layer, channel) = e.layerName(of: r.filter)
            return TopEntry(filter: r.filter, layer: layer, channel: channel, score: r.score, p: r.p)
        })
    }

    func filter(model: String, selector: QueryRequest.FilterSelector) throws(SaliencyError) -> FilterReply {
        let e = try engine(model)
        let j: Int
        switch selector {
        case .index(let i):
            guard i >= 0, i < e.filterCount else { throw SaliencyError(.notFound, "filter \(i) out of range 0..<\(e.filterCount)") }
            j = i
        case .channel(let layer, let channel):
            guard let l = e.schema.layerIndex(named: layer) else { throw SaliencyError(.notFound, "no layer '\(layer)' in '\(model)'") }
            guard channel >= 0, channel < e.schema.layers[l].filters else { throw SaliencyError(.notFound, "layer '\(layer)' has channels 0..<\(e.schema.layers[l].filters)") }
            j = e.schema.globalIndex(layer: l, channel: channel)
        }
        let rep = e.bank.report(filter: j)
        let (layer, channel) = e.layerName(of: j)
        var recent: [RecentScore] = []
        if e.bank.isCalibrated {
            for row in e.recentRows(16) {
                let p = e.bank.tailProbability(filter: j, value: row[j])
                recent.append(RecentScore(value: Double(row[j]), score: POT.score(p: p), p: p, zscore: e.bank.zScore(filter: j, value: row[j])))
            }
        }
        return FilterReply(model: model, filter: j, layer: layer, channel: channel, tail: rep.tail.rawValue, threshold: rep.threshold,
                           extreme_threshold: rep.extremeThreshold, shape: rep.shape, scale: rep.scale, n: rep.n, peaks: rep.peaks,
                           peaks_in_ring: rep.peaksInRing, peaks_since_fit: rep.peaksSinceFit, due: rep.due, extremes: rep.extremes,
                           mean: rep.mean, std: rep.standardDeviation, firing: e.tracker.isFiring(j),
                           window_exceedances: e.bank.isCalibrated ? e.tracker.exceedances(inLastWindowOf: j, at: e.bank.rows) : 0,
                           recent: recent)
    }

    /// Alerts since `since` (or the active ones), at most `query.max_reply_bytes` of them: a cut
    /// reply says `"truncated": true` and the client asks again with `since` = the last seq it got.
    func alerts(since: UInt64?, active: Bool) throws -> [UInt8] {
        let budget = configuration.query.maxReplyBytes - 256
        var out = Array("{\"ok\":true,\"last_seq\":\(alertLog.nextSequence - 1),".utf8)
        var items: [[UInt8]]
        var truncated = false
        if active {
            let recs = engines.values.flatMap { Array($0.active.values) + ($0.modelAlert.map { [$0] } ?? []) }.sorted { $0.seq < $1.seq }
            items = []
            var bytes = 0
            for r in recs {
                let j = r.json()
                if bytes + j.count + 1 > budget { truncated = true; break }
                bytes += j.count + 1
                items.append(j)
            }
        } else {
            let (entries, oldest) = alertLog.entries(since: since ?? 0, limit: 10_000, maxBytes: budget)
            items = entries
            out += Array("\"oldest_retained\":\(oldest),".utf8)
            if let last = entries.last, let seq = AlertLog.decodeLine(last[...]), seq < alertLog.lastRetained { truncated = true }
        }
        if truncated { out += Array("\"truncated\":true,".utf8) }
        out += Array("\"alerts\":[".utf8)
        for (i, e) in items.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out += e
        }
        out += Array("]}".utf8)
        return out
    }

    func encode<T: Encodable>(_ v: T) throws -> [UInt8] { [UInt8](try Self.encoder.encode(v)) }
}

func jsonString(_ s: String) -> String {
    String(decoding: (try? JSONEncoder().encode(s)) ?? Data("\"\"".utf8), as: UTF8.self)
}
