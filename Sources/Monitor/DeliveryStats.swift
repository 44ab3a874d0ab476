import Synchronization

/// Alert delivery to Alertmanager, as counts: written by the forwarder's thread, read when
/// `/metrics` is scraped and by the status page. The forwarder (AlertmanagerForwarder.swift)
/// knows nothing of metrics; DaemonMetrics knows nothing of HTTP.
public final class DeliveryStats: Sendable {
    /// One configured Alertmanager (`alertmanager.urls`).
    public struct Target: Sendable, Equatable {
        public var url: String
        /// Alerts accepted by this Alertmanager (HTTP 2xx), counted per alert, not per POST.
        public var sent: UInt64 = 0
        /// Alerts in POSTs that failed (connection error, timeout, non-2xx).
        public var failed: UInt64 = 0
        /// POST attempts that failed (each retry counts).
        public var failedRequests: UInt64 = 0
        /// Unix time of the last successful POST; 0 before the first.
        public var lastSuccessUnix: Double = 0
        /// Whether the last attempt succeeded.
        public var up: Bool = false
        public init(url: String) { self.url = url }
    }

    public struct Snapshot: Sendable, Equatable {
        public var enabled = false
        public var targets: [Target] = []
        /// Alerts dropped because the queue was full (`alertmanager.queue_capacity`).
        public var dropped: UInt64 = 0
        /// Alerts waiting to be sent now.
        public var queued = 0
        public var capacity = 0
        /// Firing alerts the forwarder re-sends on its interval.
        public var firing = 0
        public init() {}
    }

    private let state = Mutex(Snapshot())

    public init() {}

    public func update(_ body: (inout Snapshot) -> Void) {
        state.withLock { body(&$0) }
    }

    public func snapshot() -> Snapshot {
        state.withLock { $0 }
    }
}
