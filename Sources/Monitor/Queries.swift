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
        var extremes_by_layer: [String: UInt64]
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
    }
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
    func handleQuery(_ raw: UnsafeRawBufferPointer, admin: Bool, snapshot: () -> Result<String, SaliencyError>, lastSnapshot: String?) -> [UInt8] {
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
                return try encode(status(lastSnapshot: lastSnapshot))
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
                engines[fp] = nil
                byName[model] = nil
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

    func status(lastSnapshot: String?) -> StatusReply {
        let uptime = ContinuousClock.now - startedAt
        let secs = Double(uptime.components.seconds) + Double(uptime.components.attoseconds) * 1e-18
        let models = engines.values.sorted { $0.schema.model < $1.schema.model }.map { e -> ModelStatus in
            let (phase, seen, total): (String, Int, Int) = switch e.bank.phase {
            case .calibrating(let s, let of): ("calibrating", s, of)
            case .monitoring: ("monitoring", configuration.pot.calibration, configuration.pot.calibration)
            }
            var byLayer: [String: UInt64] = [:]
            for (i, l) in e.schema.layers.enumerated() where e.layerExtremes[i] > 0 { byLayer[l.name] = e.layerExtremes[i] }
            return ModelStatus(
                model: e.schema.model, fingerprint: SchemaMessage.hex(e.fingerprint), filters: e.filterCount, layers: e.schema.layers.count,
                phase: phase, calibration_seen: seen, calibration_total: total, rows: e.bank.rows, rows_since_start: e.acceptedSinceStart,
                rate_per_s: secs > 0 ? Double(e.acceptedSinceStart) / secs : 0, firing: e.active.count, model_alert: e.modelAlert != nil,
                refits: e.bank.refitCount, due: e.bank.isCalibrated ? e.bank.dueCount : 0,
                alert_rule: RuleInfo(window: e.tracker.rule.window, fire_count: e.tracker.rule.fireCount, resolve_below: e.tracker.rule.resolveBelow),
                rejected_rows: Dictionary(uniqueKeysWithValues: e.bank.rejected.map { ($0.key.rawValue, $0.value) }),
                extremes_by_layer: byLayer, peak_stride: e.bank.peakStride, max_refit_lag_rows: e.bank.maxRefitLagRows)
        }
        let prods = producers.sorted { $0.key < $1.key }.map { id, p in
            ProducerStatus(producer: String(id, radix: 16), model: p.model, received: p.received, gaps: p.gaps, reordered: p.reordered, last_sequence: p.lastSequence)
        }
        return StatusReply(version: Self.version, uptime_s: secs, models: models, rejected: rejected, gaps: gapsTotal, producers: prods,
                           firing: engines.values.reduce(0) { $0 + $1.active.count + ($1.modelAlert == nil ? 0 : 1) },
                           alert_seq: alertLog.nextSequence - 1, queries: queries,
                           state_directory: configuration.resolvedStateDirectory, last_snapshot: lastSnapshot,
                           kernels: FilterBank.kernelISA,
                           alert_latency_us: latencySummary())
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

    func alerts(since: UInt64?, active: Bool) throws -> [UInt8] {
        var out = Array("{\"ok\":true,\"last_seq\":\(alertLog.nextSequence - 1),".utf8)
        if active {
            let recs = engines.values.flatMap { Array($0.active.values) + ($0.modelAlert.map { [$0] } ?? []) }.sorted { $0.seq < $1.seq }
            out += Array("\"alerts\":".utf8)
            out += try Self.encoder.encode(recs)
            out += Array("}".utf8)
            return out
        }
        let (entries, oldest) = alertLog.entries(since: since ?? 0, limit: 10_000)
        out += Array("\"oldest_retained\":\(oldest),\"alerts\":[".utf8)
        for (i, e) in entries.enumerated() {
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
