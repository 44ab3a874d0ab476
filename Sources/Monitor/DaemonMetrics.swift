import EVTOnline
import Prometheus
import SaliencyCore
import SaliencyStream

/// The daemon's Prometheus instruments, all created through `MetricCatalog` (one table of names,
/// types, labels and help) in the daemon's `PrometheusCollectorRegistry`. Per-model and per-layer
/// aggregates only — never a series per filter. Every series with known label values exists at 0
/// from the start (rejections by reason) or from the model's admission (per-model, per-layer), so
/// `rate()` sees the first event. Used by the engine thread only (scrape-time values:
/// `ProcessMetrics`, `DeliveryMetrics`).
final class DaemonMetrics {
    typealias C = MetricCatalog
    let registry: PrometheusCollectorRegistry

    /// A model's series, created when the model is admitted.
    private final class ModelSeries {
        let accepted, extremes, peaks, refits, gaps, firingAlerts, resolvedAlerts: Counter
        let calibrated, firing, modelShift: Gauge
        init(_ r: PrometheusCollectorRegistry, _ m: String) {
            accepted = C.predictions.counter(r, m)
            extremes = C.extremes.counter(r, m)
            peaks = C.peaks.counter(r, m)
            refits = C.refits.counter(r, m)
            gaps = C.gaps.counter(r, m)
            firingAlerts = C.alerts.counter(r, m, AlertMessage.Status.firing.rawValue)
            resolvedAlerts = C.alerts.counter(r, m, AlertMessage.Status.resolved.rawValue)
            calibrated = C.calibrated.gauge(r, m)
            firing = C.firing.gauge(r, m)
            modelShift = C.modelShift.gauge(r, m)
        }
        func destroy(_ r: PrometheusCollectorRegistry) {
            for c in [accepted, extremes, peaks, refits, gaps, firingAlerts, resolvedAlerts] { r.unregisterCounter(c) }
            for g in [calibrated, firing, modelShift] { r.unregisterGauge(g) }
        }
    }
    private var models: [String: ModelSeries] = [:]
    private var rejectedByReason: [RejectReason: Counter] = [:]
    private let processing: DurationHistogram
    private let alertLatencyHistogram: DurationHistogram
    let queries: Counter
    let snapshots: Counter
    let snapshotFailures: Counter
    /// Unix time of the last snapshot written (set by the snapshot queue: a Prometheus Gauge is Sendable).
    let lastSnapshot: Gauge
    private let snapshotInterval: Gauge
    private let alertLogFailures: Counter
    private let suppressedLines: Counter
    private let expiredModels: Counter
    private let admittedBytes: Gauge
    private let admittedLimit: Gauge
    /// Per-layer series over all models (`limits.max_layer_series`); layers beyond it share one
    /// `layer="_other"` series per model, so a schema cannot create unbounded series. Each layer
    /// series is one exceedance counter and one firing-alerts gauge.
    let maxLayerSeries: Int
    private var layerSeries = 0
    private var layerCounters: [String: [Counter]] = [:]
    private var layerGauges: [String: [Gauge]] = [:]
    private var layerPushed: [String: [UInt64]] = [:]
    private var layerOther: [String: Int] = [:]
    private var topGauges: [String: [Gauge]] = [:]
    /// Ranks exported by `saliencyd_top_score` (bounded: never a series per filter).
    static let topRanks = 10

    init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), maxLayerSeries: Int = 2048) {
        self.registry = registry
        self.maxLayerSeries = maxLayerSeries
        let r = registry
        processing = C.rowLatency.histogram(r, buckets: C.rowLatencyBuckets)
        alertLatencyHistogram = C.alertLatency.histogram(r, buckets: C.alertLatencyBuckets)
        queries = C.queries.counter(r)
        snapshots = C.snapshots.counter(r)
        snapshotFailures = C.snapshotFailures.counter(r)
        lastSnapshot = C.lastSnapshot.gauge(r)
        snapshotInterval = C.snapshotInterval.gauge(r)
        alertLogFailures = C.alertLogFailures.counter(r)
        suppressedLines = C.suppressedLines.counter(r)
        expiredModels = C.expired.counter(r)
        admittedBytes = C.admittedBytes.gauge(r)
        admittedLimit = C.admittedLimit.gauge(r)
        registerRejectionCounters()
    }

    func alertLogFailure() { alertLogFailures.increment() }
    func logSuppressed(_ n: UInt64) { suppressedLines.increment(by: Int64(clamping: n)) }
    func modelExpired() { expiredModels.increment() }
    func budget(used: Int, limit: Int) {
        admittedBytes.set(Int64(used))
        admittedLimit.set(Int64(limit))
    }
    func snapshotSettings(interval: Double) { snapshotInterval.set(interval) }

    /// `saliencyd_build_info{version, kernels} 1`: which build runs and which instruction set its
    /// FilterBank kernels use on this CPU (capacity differs ~1.5× between avx2 and sse2).
    func publishBuildInfo(version: String) {
        C.buildInfo.gauge(registry, version, FilterBank.kernelISA).set(1.0)
    }

    /// Creates a newly admitted (or restored) model's series at 0, so the first event is a change
    /// a `rate()` sees, and its calibration progress is visible before its first row.
    func admitted(_ engine: ModelEngine) {
        let s = series(engine.schema.model)
        if engine.rows == 0 && !engine.isCalibrated { s.calibrated.set(0.0) } else { calibration(engine, s) }
        ensureLayers(engine)
    }

    private func series(_ m: String) -> ModelSeries {
        if let s = models[m] { return s }
        let s = ModelSeries(registry, m)
        models[m] = s
        return s
    }

    /// Destroys every series of a model that is forgotten (reset or expired), so churn cannot
    /// accumulate series and the layer-series budget is given back.
    func forget(model engine: ModelEngine) {
        let m = engine.schema.model
        // Series are keyed by model name: the caller skips this while another layout of the same
        // name is live (limits.layout_change = "replace").
        models.removeValue(forKey: m)?.destroy(registry)
        if let cs = layerCounters.removeValue(forKey: m) {
            layerSeries -= cs.count
            for c in cs { registry.unregisterCounter(c) }
        }
        for g in layerGauges.removeValue(forKey: m) ?? [] { registry.unregisterGauge(g) }
        layerPushed[m] = nil
        layerOther[m] = nil
        for g in topGauges.removeValue(forKey: m) ?? [] { registry.unregisterGauge(g) }
    }

    private func ensureLayers(_ engine: ModelEngine) {
        let m = engine.schema.model
        guard layerCounters[m] == nil else { return }
        // Own series for the first layers while the budget lasts; the rest share `_other`.
        let layers = engine.schema.layers
        let directions = engine.configuration.tails == .upper ? ["upper"] : engine.configuration.tails == .lower ? ["lower"] : ["upper", "lower"]
        let budget = (maxLayerSeries - layerSeries) / directions.count   // series per direction
        let own = max(0, min(layers.count, budget - (layers.count > budget ? 1 : 0)))
        var names = layers.prefix(own).map(\.name)
        if own < layers.count { names.append("_other") }
        // Extremes per layer and tail: direction="upper" series, then (pot.tails lower or both)
        // direction="lower" ones for the same layers.
        layerCounters[m] = directions.flatMap { dir in names.map { C.layerExtremes.counter(registry, m, $0, dir) } }
        layerGauges[m] = names.map { C.layerFiring.gauge(registry, m, $0) }
        layerSeries += names.count * directions.count
        layerOther[m] = own
        layerPushed[m] = Array(repeating: 0, count: names.count * directions.count)
    }

    /// Per-layer extreme exceedances and firing alerts (bounded by the number of layers) and the
    /// model-level shift state, pushed periodically.
    func publishLayers(_ engine: ModelEngine) {
        let m = engine.schema.model
        ensureLayers(engine)
        let own = layerOther[m] ?? 0
        var pushed = layerPushed[m]!
        let perDirection = layerGauges[m]!.count
        let sources = engine.configuration.tails == .upper ? [engine.layerExtremes]
            : engine.configuration.tails == .lower ? [engine.layerLowerExtremes] : [engine.layerExtremes, engine.layerLowerExtremes]
        let others = sources.map { counts in (0..<counts.count).reduce(UInt64(0)) { $1 >= own ? $0 &+ counts[$1] : $0 } }
        for (i, c) in layerCounters[m]!.enumerated() {
            let d = i / perDirection, l = i % perDirection
            let now = l < own ? sources[d][l] : others[d]
            let before = pushed[i]
            if now > before { c.increment(by: Int64(clamping: now - before)) }
            pushed[i] = now
        }
        layerPushed[m] = pushed
        let gauges = layerGauges[m]!
        var firing = [Int](repeating: 0, count: gauges.count)
        for slot in engine.active.keys {
            let filter = engine.filterAndDirection(ofSlot: slot).filter
            guard filter >= 0 && filter < engine.layerOf.count else { continue }
            firing[min(Int(engine.layerOf[filter]), gauges.count - 1)] += 1
        }
        for (g, n) in zip(gauges, firing) { g.set(Int64(n)) }
        let s = series(m)
        s.firing.set(Int64(engine.active.count))
        s.modelShift.set(engine.modelAlert == nil ? 0.0 : 1.0)
    }

    /// The POT scores of the top `topRanks` filters of the latest prediction, by rank.
    func publishTop(model: String, scores: [Double]) {
        if topGauges[model] == nil {
            topGauges[model] = (1...Self.topRanks).map { C.topScore.gauge(registry, model, "\($0)") }
        }
        for (i, g) in topGauges[model]!.enumerated() where i < scores.count {
            g.set(scores[i].isFinite ? scores[i] : Double.greatestFiniteMagnitude)
        }
    }

    func accepted(model engine: ModelEngine, result: FilterBank.RowResult) {
        let s = series(engine.schema.model)
        s.accepted.increment()
        if result.peaks > 0 { s.peaks.increment(by: Int64(result.peaks)) }
        if result.extremes > 0 { s.extremes.increment(by: Int64(result.extremes)) }
        if result.refits > 0 { s.refits.increment(by: Int64(result.refits)) }
        calibration(engine, s)
        s.firing.set(Int64(engine.active.count))
        s.modelShift.set(engine.modelAlert == nil ? 0.0 : 1.0)
    }

    private func calibration(_ engine: ModelEngine, _ s: ModelSeries) {
        switch engine.phase {
        case .calibrating(let seen, let of): s.calibrated.set(Double(seen) / Double(max(1, of)))
        case .monitoring: s.calibrated.set(1.0)
        }
    }

    func rejected(_ reason: RejectReason) {
        rejectedByReason[reason]!.increment()
    }

    /// One `saliencyd_rejected_total{reason}` series per known reason, exported at 0 from the start
    /// (a rate over a series that appears with its first event misses that event).
    func registerRejectionCounters() {
        for r in RejectReason.allCases where rejectedByReason[r] == nil {
            rejectedByReason[r] = C.rejected.counter(registry, r.rawValue)
        }
    }

    func gaps(_ n: UInt64, model: String) {
        series(model).gaps.increment(by: Int64(clamping: n))
    }

    func alert(status: String, model: String) {
        let s = series(model)
        (status == AlertMessage.Status.resolved.rawValue ? s.resolvedAlerts : s.firingAlerts).increment()
    }

    /// Records the processing time of every accepted row (a lock and 17 compares: ~0.1 µs, under
    /// 1 % of a row at K = 256). Every row, so the count is the rows scored and a rare slow row
    /// (calibration's first fits) cannot make p99 on a short feed.
    func latency(_ d: Duration) {
        processing.record(d)
    }

    /// Arrival-to-publish time of a message that produced alerts, in microseconds.
    func alertLatency(microseconds us: Double) {
        guard us.isFinite, us >= 0 else { return }
        alertLatencyHistogram.record(.nanoseconds(Int64(min(us * 1000, 1e15))))
    }
}
