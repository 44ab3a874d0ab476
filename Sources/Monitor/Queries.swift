import EVTOnline
import Foundation
import SaliencyCore
import SaliencyStream

/// Answers to REP queries (docs/protocol.md §4). Every failure is a JSON error with a code.
extension DaemonCore {
    /// Producers listed by `status` (the rest are counted in `producer_count`).
    static let statusProducers = 32
    static let statusLayers = 32

    static let version = SaliencyVersion.string   // Sources/Core/Version.swift

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
            reject(.badQuery, error.message)
            return QueryReply.error(error)
        }
        if request.isAdmin && !admin {
            reject(.forbiddenQuery, "state-changing query from a non-admin client")
            return QueryReply.error(code: .forbidden, message: "this query changes state; the client's CURVE key is not on security.admin_clients_file")
        }
        do {
            switch request {
            case .status:
                return Wire.encode(status(lastSnapshot: lastSnapshot, snapshotHealth: snapshotHealth))
            case .top(let model, let k, let by, let window):
                return Wire.encode(try engine(model).top(k: k, by: by, window: window))
            case .filter(let model, let selector):
                return Wire.encode(try engine(model).filter(selector))
            case .alerts(let since, let active):
                return alerts(since: since, active: active)
            case .snapshot:
                return Wire.encode(SnapshotReply(snapshot: try snapshot().get()))
            case .reset(let model):
                guard let fp = byName[model], let e = engines[fp] else { throw SaliencyError(.notFound, "no model '\(model)'; status lists the models") }
                remove(fp)
                logger.warning("model state reset by query; it recalibrates when its schema arrives again", metadata: ["model": "\(model)", "rows_forgotten": "\(e.rows)"])
                return Wire.encode(ResetReply(reset: model))
            }
        } catch {
            return QueryReply.error((error as? SaliencyError) ?? SaliencyError(.badRequest, "\(error)"))
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
        let models = engines.values.sorted { $0.schema.model < $1.schema.model }.map {
            $0.statusEntry(uptimeSeconds: secs, statusLayers: Self.statusLayers)
        }
        let prods = producers.sorted { $0.value.lastSeen > $1.value.lastSeen }.prefix(Self.statusProducers).map { id, p in
            StatusReply.Producer(producer: String(id, radix: 16), model: p.model, received: p.received, gaps: p.gaps, reordered: p.reordered, last_sequence: p.lastSequence)
        }
        let l = configuration.limits
        return StatusReply(version: Self.version, uptime_s: secs, models: models, rejected: rejected.reduce(into: [:]) { $0[$1.key.rawValue] = $1.value },
                           gaps: gapsTotal, producers: Array(prods),
                           firing: engines.values.reduce(0) { $0 + $1.active.count + ($1.modelAlert == nil ? 0 : 1) },
                           alert_seq: alertLog.nextSequence - 1, queries: queries,
                           state_directory: configuration.resolvedStateDirectory, last_snapshot: lastSnapshot,
                           kernels: FilterBank.kernelISA, alert_latency_us: latencySummary(), producer_count: producers.count,
                           limits: .init(admitted_bytes: admittedBytes, max_total_bytes: l.maxTotalBytes, max_model_bytes: l.maxModelBytes,
                                         max_models: configuration.monitor.maxModels, max_layers: l.maxLayers, max_producers: l.maxProducers),
                           persistence: .init(alert_log_failures: alertLog.failures, alert_log_error: alertLog.lastError,
                                              snapshot_failures: snapshotHealth.failures, snapshot_error: snapshotHealth.error),
                           log_suppressed: logLimiter.suppressedTotal, models_expired: modelsExpired)
    }

    func latencySummary() -> [String: Double] {
        guard !alertLatencies.isEmpty else { return [:] }
        let v = alertLatencies.sorted()
        func q(_ p: Double) -> Double { v[min(v.count - 1, Int((p * Double(v.count)).rounded(.up)) - 1)] }
        return ["count": Double(v.count), "p50": q(0.5), "p99": q(0.99), "max": v.last!]
    }

    /// Alerts since `since` (or the active ones), at most `query.max_reply_bytes` of them: a cut
    /// reply says `"truncated": true` and the client asks again with `since` = the last seq it got.
    /// The body is an `AlertsReply`, assembled from the log's lines (each already an encoded
    /// `AlertMessage`) instead of decoding and re-encoding them.
    func alerts(since: UInt64?, active: Bool) -> [UInt8] {
        let budget = configuration.query.maxReplyBytes - 256
        var items: [[UInt8]]
        var truncated = false
        var oldest: UInt64?
        if active {
            items = []
            var bytes = 0
            for a in engines.values.flatMap(\.firingAlerts).sorted(by: { $0.seq < $1.seq }) {
                let j = a.json()
                if bytes + j.count + 1 > budget { truncated = true; break }
                bytes += j.count + 1
                items.append(j)
            }
        } else {
            let (entries, o) = alertLog.entries(since: since ?? 0, limit: 10_000, maxBytes: budget)
            items = entries
            oldest = o
            if let last = entries.last, let seq = AlertLog.decodeLine(last[...]), seq < alertLog.lastRetained { truncated = true }
        }
        // Keys in sorted order, as Wire.encode writes an AlertsReply.
        var out = Array("{\"alerts\":[".utf8)
        for (i, e) in items.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out += e
        }
        out += Array("],\"last_seq\":\(alertLog.nextSequence - 1),\"ok\":true".utf8)
        if let o = oldest { out += Array(",\"oldest_retained\":\(o)".utf8) }
        if truncated { out += Array(",\"truncated\":true".utf8) }
        out += Array("}".utf8)
        return out
    }
}
