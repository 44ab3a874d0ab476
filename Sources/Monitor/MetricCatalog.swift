import Prometheus

/// Every metric family saliencyd exports, in ONE table: name, type, label names and help text.
/// Instruments are created only through `MetricCatalog.Family` (the registry's `make*` with this
/// help), so every family has `# HELP` and `# TYPE`, and a name is never registered twice with
/// different help (swift-prometheus stops the process on that). docs/operations.md "Prometheus"
/// lists every family (MetricCatalogTests checks it).
enum MetricCatalog {
    enum Kind: String, Sendable { case counter, gauge, histogram }

    struct Family: Sendable, Hashable {
        let name: String
        let kind: Kind
        let labels: [String]
        let help: String
    }

    // MARK: Feed and engine
    static let predictions = Family(name: "saliencyd_predictions_total", kind: .counter, labels: ["model"],
        help: "Prediction rows accepted and scored, per model.")
    static let rejected = Family(name: "saliencyd_rejected_total", kind: .counter, labels: ["reason"],
        help: "Input rejected (feed messages and queries), by reason; every reason is exported from the start.")
    static let gaps = Family(name: "saliencyd_sequence_gaps_total", kind: .counter, labels: ["model"],
        help: "Predictions lost upstream (gaps in producers' sequence numbers), per model.")
    static let extremes = Family(name: "saliencyd_extreme_exceedances_total", kind: .counter, labels: ["model"],
        help: "Filter scores above their extreme (POT) threshold, per model.")
    static let layerExtremes = Family(name: "saliencyd_layer_extreme_exceedances_total", kind: .counter, labels: ["model", "layer", "direction"],
        help: "Extreme exceedances per layer and tail direction (upper: saliency above its extreme threshold; lower: below its lower one, or exactly 0; layers beyond limits.max_layer_series share layer=\"_other\"); pushed every 5 s.")
    static let peaks = Family(name: "saliencyd_peaks_total", kind: .counter, labels: ["model"],
        help: "Filter scores above their peak threshold (added to the GPD tail sample), per model.")
    static let refits = Family(name: "saliencyd_refits_total", kind: .counter, labels: ["model"],
        help: "GPD tail refits, per model.")
    static let calibrated = Family(name: "saliencyd_calibrated_ratio", kind: .gauge, labels: ["model"],
        help: "Calibration progress per model: rows seen / pot.calibration while calibrating, 1 once monitoring.")
    static let rowLatency = Family(name: "saliencyd_row_processing_seconds", kind: .histogram, labels: [],
        help: "Time to score one accepted prediction row (every row is timed).")
    static let admittedBytes = Family(name: "saliencyd_admitted_state_bytes", kind: .gauge, labels: [],
        help: "Memory the admitted models may claim (their maximum size summed).")
    static let admittedLimit = Family(name: "saliencyd_admitted_state_limit_bytes", kind: .gauge, labels: [],
        help: "limits.max_total_bytes: the budget admitted models are charged against.")
    static let expired = Family(name: "saliencyd_models_expired_total", kind: .counter, labels: [],
        help: "Models forgotten after limits.idle_expiry / limits.calibrating_idle_expiry without input.")
    static let topScore = Family(name: "saliencyd_top_score", kind: .gauge, labels: ["model", "rank"],
        help: "POT score of the rank-th most salient filter of the latest prediction (ranks 1-10); pushed every 5 s.")

    // MARK: Alerts
    static let alerts = Family(name: "saliencyd_alerts_total", kind: .counter, labels: ["model", "status"],
        help: "Alerts published (firing and resolved, filter- and model-level), per model.")
    static let firing = Family(name: "saliencyd_firing_alerts", kind: .gauge, labels: ["model"],
        help: "Filter-level alerts firing now, per model.")
    static let layerFiring = Family(name: "saliencyd_layer_firing_alerts", kind: .gauge, labels: ["model", "layer"],
        help: "Filter-level alerts firing now, per layer (same layer series as saliencyd_layer_extreme_exceedances_total); pushed every 5 s.")
    static let modelShift = Family(name: "saliencyd_model_shift_firing", kind: .gauge, labels: ["model"],
        help: "1 while the model-level ModelShift alert fires for the model, else 0; pushed every 5 s.")
    static let alertLatency = Family(name: "saliencyd_alert_latency_seconds", kind: .histogram, labels: [],
        help: "Time from the arrival of a prediction that produced alerts to their publication on the alerts socket.")
    static let alertLogFailures = Family(name: "saliencyd_alert_log_failures_total", kind: .counter, labels: [],
        help: "Alerts that could not be appended to the durable alert log.")

    // MARK: State, queries, logs, build
    static let snapshots = Family(name: "saliencyd_snapshots_total", kind: .counter, labels: [],
        help: "State snapshots written.")
    static let snapshotFailures = Family(name: "saliencyd_snapshot_failures_total", kind: .counter, labels: [],
        help: "State snapshots that failed.")
    static let lastSnapshot = Family(name: "saliencyd_last_snapshot_timestamp_seconds", kind: .gauge, labels: [],
        help: "Unix time of the last state snapshot written (the restored one's at start; 0 if none). Age: time() - this.")
    static let snapshotInterval = Family(name: "saliencyd_snapshot_interval_seconds", kind: .gauge, labels: [],
        help: "state.snapshot_interval: seconds between background snapshots.")
    static let queries = Family(name: "saliencyd_queries_total", kind: .counter, labels: [],
        help: "Queries received on the query socket.")
    static let suppressedLines = Family(name: "saliencyd_log_lines_suppressed_total", kind: .counter, labels: [],
        help: "Log lines suppressed by the per-kind rate limit (monitor.log_burst).")
    static let buildInfo = Family(name: "saliencyd_build_info", kind: .gauge, labels: ["version", "kernels"],
        help: "Always 1: the running version and the instruction set of the FilterBank kernels (avx2, sse2, generic).")

    // MARK: Alertmanager delivery (DeliveryStats, read at scrape time)
    static let amSent = Family(name: "saliencyd_alertmanager_alerts_sent_total", kind: .counter, labels: ["url"],
        help: "Alerts accepted by this Alertmanager (HTTP 2xx), per alert.")
    static let amFailed = Family(name: "saliencyd_alertmanager_alerts_failed_total", kind: .counter, labels: ["url"],
        help: "Alerts in POSTs to this Alertmanager that failed (connection error, timeout, non-2xx).")
    static let amFailedRequests = Family(name: "saliencyd_alertmanager_requests_failed_total", kind: .counter, labels: ["url"],
        help: "POST attempts to this Alertmanager that failed (each retry counts).")
    static let amUp = Family(name: "saliencyd_alertmanager_up", kind: .gauge, labels: ["url"],
        help: "1 if the last POST to this Alertmanager succeeded, else 0.")
    static let amLastSuccess = Family(name: "saliencyd_alertmanager_last_success_timestamp_seconds", kind: .gauge, labels: ["url"],
        help: "Unix time of the last successful POST to this Alertmanager; 0 before the first.")
    static let amDropped = Family(name: "saliencyd_alertmanager_alerts_dropped_total", kind: .counter, labels: [],
        help: "Alerts dropped because the delivery queue was full (alertmanager.queue_capacity).")
    static let amQueue = Family(name: "saliencyd_alertmanager_queue_length", kind: .gauge, labels: [],
        help: "Alerts waiting to be sent to Alertmanager now.")
    static let amQueueCapacity = Family(name: "saliencyd_alertmanager_queue_capacity", kind: .gauge, labels: [],
        help: "alertmanager.queue_capacity (0 when delivery to Alertmanager is off).")

    // MARK: Process (Prometheus client-library conventions; read from /proc at scrape time)
    static let cpu = Family(name: "process_cpu_seconds_total", kind: .counter, labels: [],
        help: "Total user and system CPU time spent in seconds.")
    static let rss = Family(name: "process_resident_memory_bytes", kind: .gauge, labels: [],
        help: "Resident memory size in bytes.")
    static let vsz = Family(name: "process_virtual_memory_bytes", kind: .gauge, labels: [],
        help: "Virtual memory size in bytes.")
    static let openFDs = Family(name: "process_open_fds", kind: .gauge, labels: [],
        help: "Number of open file descriptors.")
    static let maxFDs = Family(name: "process_max_fds", kind: .gauge, labels: [],
        help: "Maximum number of open file descriptors.")
    static let startTime = Family(name: "process_start_time_seconds", kind: .gauge, labels: [],
        help: "Start time of the process since unix epoch in seconds.")

    static let all: [Family] = [
        predictions, rejected, gaps, extremes, layerExtremes, peaks, refits, calibrated, rowLatency, admittedBytes,
        admittedLimit, expired, topScore, alerts, firing, layerFiring, modelShift, alertLatency, alertLogFailures,
        snapshots, snapshotFailures, lastSnapshot, snapshotInterval, queries, suppressedLines, buildInfo,
        amSent, amFailed, amFailedRequests, amUp, amLastSuccess, amDropped, amQueue, amQueueCapacity,
        cpu, rss, vsz, openFDs, maxFDs, startTime,
    ]

    /// Row latency buckets: log-spaced 0.5 µs … 100 ms (1-2-5), 17 buckets. A row takes ~15 µs
    /// at K=4096 (the default 5 ms … 10 s buckets put every row in the first one).
    static let rowLatencyBuckets: [Duration] = logBuckets(from: -7, to: -1)
    /// Alert latency buckets: 0.5 µs … 1 s.
    static let alertLatencyBuckets: [Duration] = logBuckets(from: -7, to: 0)

    /// 5·10^lo, 1·10^(lo+1), 2·10^(lo+1), 5·10^(lo+1), … 1·10^hi seconds.
    static func logBuckets(from lo: Int, to hi: Int) -> [Duration] {
        var out: [Duration] = [.nanoseconds(5 * pow10ns(lo))]
        for e in (lo + 1)...hi {
            for m: Int64 in [1, 2, 5] where !(e == hi && m > 1) { out.append(.nanoseconds(m * pow10ns(e))) }
        }
        return out
    }
    private static func pow10ns(_ e: Int) -> Int64 {
        var v: Int64 = 1
        for _ in 0..<(e + 9) { v *= 10 }
        return v
    }
}

extension MetricCatalog.Family {
    func labelPairs(_ values: [String]) -> [(String, String)] {
        precondition(values.count == labels.count, "\(name): \(labels.count) label values expected")
        return Array(zip(labels, values))
    }

    var descriptor: MetricNameDescriptor { MetricNameDescriptor(metricName: name, unitName: "", helpText: help) }

    func counter(_ r: PrometheusCollectorRegistry, _ values: String...) -> Counter {
        precondition(kind == .counter, "\(name) is a \(kind.rawValue)")
        return r.makeCounter(descriptor: descriptor, labels: labelPairs(values))
    }

    func gauge(_ r: PrometheusCollectorRegistry, _ values: String...) -> Gauge {
        precondition(kind == .gauge, "\(name) is a \(kind.rawValue)")
        return r.makeGauge(descriptor: descriptor, labels: labelPairs(values))
    }

    func histogram(_ r: PrometheusCollectorRegistry, buckets: [Duration]) -> DurationHistogram {
        precondition(kind == .histogram && labels.isEmpty, "\(name) is not an unlabeled histogram")
        return r.makeDurationHistogram(descriptor: descriptor, labels: [], buckets: buckets)
    }
}
