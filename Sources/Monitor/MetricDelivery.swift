import Prometheus
import Synchronization

/// Alertmanager delivery metrics from `DeliveryStats`, read at scrape time
/// (`MetricsServer.beforeScrape`). Per-target series carry `url` (from `alertmanager.urls`: as
/// many as configured, never peer input); queue and drop series exist at 0 when delivery is off.
final class DeliveryMetrics: Sendable {
    typealias C = MetricCatalog
    private let stats: DeliveryStats
    private let registry: PrometheusCollectorRegistry
    private let dropped: Counter
    private let queued, capacity: Gauge

    private struct TargetSeries: @unchecked Sendable {   // Prometheus Counter/Gauge are Sendable classes
        let sent, failed, failedRequests: Counter
        let up, lastSuccess: Gauge
        var exported: DeliveryStats.Target
    }
    private struct State: @unchecked Sendable {
        var droppedExported: UInt64 = 0
        var targets: [String: TargetSeries] = [:]
    }
    private let state = Mutex(State())

    init(stats: DeliveryStats, registry r: PrometheusCollectorRegistry) {
        self.stats = stats
        registry = r
        dropped = C.amDropped.counter(r)
        queued = C.amQueue.gauge(r)
        capacity = C.amQueueCapacity.gauge(r)
        update()
    }

    func update() {
        let s = stats.snapshot()
        queued.set(Int64(s.queued))
        capacity.set(Int64(s.enabled ? s.capacity : 0))
        state.withLock { st in
            if s.dropped > st.droppedExported { dropped.increment(by: Int64(clamping: s.dropped - st.droppedExported)) }
            st.droppedExported = max(st.droppedExported, s.dropped)
            let urls = Set(s.targets.map(\.url))
            for (url, t) in st.targets where !urls.contains(url) {
                for c in [t.sent, t.failed, t.failedRequests] { registry.unregisterCounter(c) }
                for g in [t.up, t.lastSuccess] { registry.unregisterGauge(g) }
                st.targets[url] = nil
            }
            for target in s.targets {
                var t = st.targets[target.url] ?? TargetSeries(
                    sent: C.amSent.counter(registry, target.url), failed: C.amFailed.counter(registry, target.url),
                    failedRequests: C.amFailedRequests.counter(registry, target.url), up: C.amUp.gauge(registry, target.url),
                    lastSuccess: C.amLastSuccess.gauge(registry, target.url), exported: .init(url: target.url))
                func add(_ c: Counter, _ now: UInt64, _ before: UInt64) { if now > before { c.increment(by: Int64(clamping: now - before)) } }
                add(t.sent, target.sent, t.exported.sent)
                add(t.failed, target.failed, t.exported.failed)
                add(t.failedRequests, target.failedRequests, t.exported.failedRequests)
                t.up.set(target.up ? 1.0 : 0.0)
                t.lastSuccess.set(target.lastSuccessUnix)
                t.exported.sent = max(t.exported.sent, target.sent)
                t.exported.failed = max(t.exported.failed, target.failed)
                t.exported.failedRequests = max(t.exported.failedRequests, target.failedRequests)
                st.targets[target.url] = t
            }
        }
    }
}
