import CoreMetrics
import EVTOnline
import Metrics
import SaliencyCore
import SaliencyStream

/// The daemon's swift-metrics instruments. Per-model and per-layer aggregates only — never a
/// series per filter. Instruments are created once and cached (creation goes through the factory).
final class DaemonMetrics {
    private var acceptedByModel: [String: Counter] = [:]
    private var extremesByModel: [String: Counter] = [:]
    private var peaksByModel: [String: Counter] = [:]
    private var refitsByModel: [String: Counter] = [:]
    private var calibrationByModel: [String: Gauge] = [:]
    private var firingByModel: [String: Gauge] = [:]
    private var rejectedByReason: [RejectReason: Counter] = [:]
    private var alertsByKey: [String: Counter] = [:]
    private var gapsByModel: [String: Counter] = [:]
    private let processing = Timer(label: "saliencyd_row_processing_seconds")
    let queries = Counter(label: "saliencyd_queries_total")
    let snapshots = Counter(label: "saliencyd_snapshots_total")
    let snapshotFailures = Counter(label: "saliencyd_snapshot_failures_total")
    private let alertLogFailures = Counter(label: "saliencyd_alert_log_failures_total")
    private let suppressedLines = Counter(label: "saliencyd_log_lines_suppressed_total")
    private let expiredModels = Counter(label: "saliencyd_models_expired_total")
    private let admittedBytes = Gauge(label: "saliencyd_admitted_state_bytes")
    private let admittedLimit = Gauge(label: "saliencyd_admitted_state_limit_bytes")
    /// Per-layer series over all models (`limits.max_layer_series`); layers beyond it share one
    /// `layer="_other"` series per model, so a schema cannot create unbounded series.
    let maxLayerSeries: Int
    private var layerSeries = 0
    private var latencyCountdown = 0
    private var layerCounters: [String: [Counter]] = [:]
    private var layerPushed: [String: [UInt64]] = [:]
    private var topGauges: [String: [Gauge]] = [:]
    /// Ranks exported by `saliencyd_top_score` (bounded: never a series per filter).
    static let topRanks = 10

    init(maxLayerSeries: Int = 2048) {
        self.maxLayerSeries = maxLayerSeries
    }

    func alertLogFailure() { alertLogFailures.increment() }
    func logSuppressed(_ n: UInt64) { suppressedLines.increment(by: Int(clamping: n)) }
    func modelExpired() { expiredModels.increment() }
    func budget(used: Int, limit: Int) {
        admittedBytes.record(used)
        admittedLimit.record(limit)
    }

    /// Destroys every series of a model that is forgotten (reset or expired), so churn cannot
    /// accumulate series and the layer-series budget is given back.
    func forget(model engine: ModelEngine) {
        let m = engine.schema.model
        // Series are keyed by model name: the caller skips this while another layout of the same
        // name is live (limits.layout_change = "replace").
        for dict in [acceptedByModel, extremesByModel, peaksByModel, refitsByModel, gapsByModel] { dict[m]?.destroy() }
        acceptedByModel[m] = nil; extremesByModel[m] = nil; peaksByModel[m] = nil; refitsByModel[m] = nil; gapsByModel[m] = nil
        calibrationByModel.removeValue(forKey: m)?.destroy()
        firingByModel.removeValue(forKey: m)?.destroy()
        if let cs = layerCounters.removeValue(forKey: m) {
            layerSeries -= cs.count
            for c in cs { c.destroy() }
        }
        layerPushed[m] = nil
        layerOther[m] = nil
        for g in topGauges.removeValue(forKey: m) ?? [] { g.destroy() }
    }
    private var layerOther: [String: Int] = [:]

    /// `saliencyd_build_info{version, kernels} 1`: which build runs and which instruction set its
    /// FilterBank kernels use on this CPU (capacity differs ~1.5× between avx2 and sse2).
    static func publishBuildInfo(version: String) {
        Gauge(label: "saliencyd_build_info", dimensions: [("version", version), ("kernels", FilterBank.kernelISA)]).record(1)
    }

    /// Per-layer extreme exceedances (bounded by the number of layers), pushed periodically.
    func publishLayers(_ engine: ModelEngine) {
        let m = engine.schema.model
        if layerCounters[m] == nil {
            // Own series for the first layers while the budget lasts; the rest share `_other`.
            let layers = engine.schema.layers
            let own = max(0, min(layers.count, maxLayerSeries - layerSeries - (layers.count > maxLayerSeries - layerSeries ? 1 : 0)))
            var cs = layers.prefix(own).map { Counter(label: "saliencyd_layer_extreme_exceedances_total", dimensions: [("model", m), ("layer", $0.name)]) }
            if own < layers.count {
                cs.append(Counter(label: "saliencyd_layer_extreme_exceedances_total", dimensions: [("model", m), ("layer", "_other")]))
            }
            layerSeries += cs.count
            layerOther[m] = own
            layerCounters[m] = cs
            layerPushed[m] = Array(repeating: 0, count: cs.count)
        }
        let own = layerOther[m] ?? 0
        var pushed = layerPushed[m]!
        var other: UInt64 = 0
        for i in 0..<engine.layerExtremes.count where i >= own { other &+= engine.layerExtremes[i] }
        for (i, c) in layerCounters[m]!.enumerated() {
            let now = i < own ? engine.layerExtremes[i] : other
            let before = pushed[i]
            if now > before { c.increment(by: Int(clamping: now - before)) }
            pushed[i] = now
        }
        layerPushed[m] = pushed
    }

    /// The POT scores of the top `topRanks` filters of the latest prediction, by rank.
    func publishTop(model: String, scores: [Double]) {
        if topGauges[model] == nil {
            topGauges[model] = (1...Self.topRanks).map { Gauge(label: "saliencyd_top_score", dimensions: [("model", model), ("rank", "\($0)")]) }
        }
        for (i, g) in topGauges[model]!.enumerated() where i < scores.count {
            g.record(scores[i].isFinite ? scores[i] : Double.greatestFiniteMagnitude)
        }
    }

    func accepted(model engine: ModelEngine, result: FilterBank.RowResult) {
        let m = engine.schema.model
        counter(&acceptedByModel, "saliencyd_predictions_total", m).increment()
        if result.peaks > 0 { counter(&peaksByModel, "saliencyd_peaks_total", m).increment(by: result.peaks) }
        if result.extremes > 0 { counter(&extremesByModel, "saliencyd_extreme_exceedances_total", m).increment(by: result.extremes) }
        if result.refits > 0 { counter(&refitsByModel, "saliencyd_refits_total", m).increment(by: result.refits) }
        let g = calibrationByModel[m] ?? {
            let g = Gauge(label: "saliencyd_calibrated_ratio", dimensions: [("model", m)])
            calibrationByModel[m] = g
            return g
        }()
        switch engine.phase {
        case .calibrating(let seen, let of): g.record(Double(seen) / Double(of))
        case .monitoring: g.record(1)
        }
        let f = firingByModel[m] ?? {
            let g = Gauge(label: "saliencyd_firing_alerts", dimensions: [("model", m)])
            firingByModel[m] = g
            return g
        }()
        f.record(engine.active.count)
    }

    func rejected(_ reason: RejectReason) {
        if rejectedByReason.isEmpty { registerRejectionCounters() }
        rejectedByReason[reason]!.increment()
    }

    /// One `saliencyd_rejected_total{reason}` series per known reason, exported at 0 from the start
    /// (a rate over a series that appears with its first event misses that event).
    func registerRejectionCounters() {
        for r in RejectReason.allCases where rejectedByReason[r] == nil {
            rejectedByReason[r] = Counter(label: "saliencyd_rejected_total", dimensions: [("reason", r.rawValue)])
        }
    }

    func gaps(_ n: UInt64, model: String) {
        counter(&gapsByModel, "saliencyd_sequence_gaps_total", model).increment(by: Int(clamping: n))
    }

    func alert(status: String, model: String) {
        let key = status + "\u{0}" + model
        let c = alertsByKey[key] ?? {
            let c = Counter(label: "saliencyd_alerts_total", dimensions: [("model", model), ("status", status)])
            alertsByKey[key] = c
            return c
        }()
        c.increment()
    }

    /// Records processing time of 1 row in 16 (the timer histogram is not free).
    func latency(_ d: Duration) {
        latencyCountdown -= 1
        guard latencyCountdown <= 0 else { return }
        latencyCountdown = 16
        processing.recordNanoseconds(d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000)
    }

    private func counter(_ dict: inout [String: Counter], _ label: String, _ model: String) -> Counter {
        if let c = dict[model] { return c }
        let c = Counter(label: label, dimensions: [("model", model)])
        dict[model] = c
        return c
    }
}
