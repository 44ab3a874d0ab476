import EVTOnline
import Foundation
import Logging
import Prometheus
import SaliencyCore
import SaliencyStream
import Synchronization

/// The engine thread: owns the feed SUB, the alerts PUB and the query REP sockets (one owner
/// thread for all three, so the statistics need no locks), polls them with `zmq_poll`, and never
/// runs on Swift's cooperative pool.
///
/// `@unchecked Sendable` argument: after `start`, every mutable field except `stopRequested`,
/// `reloadMailbox`, `readyState` and `pages` is touched only by the engine thread; those are an
/// `Atomic`, two `Mutex`es and a `Sendable` mailbox. `context` is a thread-safe libzmq context.
final class EngineLoop: @unchecked Sendable {
    let context: ZMQContext
    let initialConfiguration: DaemonConfiguration
    let logger: Logger
    let notifier: SystemdNotifier
    let metrics: DaemonMetrics
    let stopRequested = Atomic<Bool>(false)
    /// Set when the final snapshot at shutdown failed: the process exits non-zero, so systemd
    /// (and the operator) learn that learned state since the last good snapshot is lost.
    let finalSnapshotFailed = Atomic<Bool>(false)
    /// Snapshot failures and the last reason (written by the snapshot queue, read by `status`).
    let snapshotHealth = SnapshotHealth()
    let reloadMailbox = Mutex<DaemonConfiguration?>(nil)
    /// "starting" → "ready" (endpoints bound) or "failed: …"; read by tests and the service.
    let readyState = Mutex<String>("starting")
    /// Status-page requests from the metrics port (StatusPageData.swift), served once per turn.
    let pages = StatusMailbox()
    private(set) var zap: ZAPHandler?
    /// Alert delivery to Alertmanager as counts (AlertmanagerForwarder writes; metrics and the
    /// status page read). `enabled` is false unless `[alertmanager] urls` is set.
    let delivery = DeliveryStats()

    init(configuration: DaemonConfiguration, logger: Logger, notifier: SystemdNotifier,
         registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) throws(SaliencyError) {
        // Two I/O threads: the feed on one, queries and alerts on the other (socket affinity), so
        // a flood of connections to the query port cannot stall ingest, nor the feed the queries.
        do { context = try ZMQContext(ioThreads: 2) } catch { throw error.saliencyError }
        initialConfiguration = configuration
        metrics = DaemonMetrics(registry: registry, maxLayerSeries: configuration.limits.maxLayerSeries)
        self.logger = logger
        self.notifier = notifier
    }

    func requestStop() {
        stopRequested.store(true, ordering: .releasing)
    }

    func requestReload(_ c: DaemonConfiguration) {
        reloadMailbox.withLock { $0 = c }
    }

    /// Runs on the dedicated thread until stopped. Throws only for start-up failures.
    func run() throws(SaliencyError) {
        defer { pages.close() }   // waiting status pages get 503 at once, not a timeout
        let cfg = initialConfiguration
        let stateDir = cfg.resolvedStateDirectory
        let directory = StateDirectory(path: stateDir)
        let alertLog: AlertLog
        var schemaKeys: SchemaKeys?
        do {
            try AtomicFile.ensureDirectory(stateDir)
            try directory.lock()
            for line in directory.tidy() { logger.warning("state directory: \(line)", metadata: ["state": "\(stateDir)"]) }
            alertLog = try AlertLog(directory: stateDir, maxEntries: cfg.alerts.logMaxEntries)
            if cfg.security.curve, !cfg.security.schemaKeysFile.isEmpty { schemaKeys = try SchemaKeys.load(path: cfg.security.schemaKeysFile) }
        } catch {
            readyState.withLock { $0 = "failed: \(error.message)" }
            throw error
        }
        if let note = alertLog.recoveryNote { logger.warning("\(note)") }
        let core = DaemonCore(configuration: cfg, alertLog: alertLog, logger: logger, metrics: metrics, schemaKeys: schemaKeys)
        let store = SnapshotStore(directory: stateDir, logger: logger)
        store.restore(into: core)
        if let d = (try? FileManager.default.attributesOfItem(atPath: store.currentPath))?[.modificationDate] as? Date {
            metrics.lastSnapshot.set(d.timeIntervalSince1970)   // the restored snapshot's age until the next write
        }

        var adminKeys = Set<String>()
        let sockets: Sockets
        do {
            sockets = try openSockets(cfg, adminKeys: &adminKeys)
        } catch {
            readyState.withLock { $0 = "failed: \(error.message)" }
            throw error
        }
        let feed = sockets.feed, pub = sockets.pub, rep = sockets.rep
        logger.notice("saliencyd ready", metadata: [
            "feed": "\(cfg.feed.endpoint)\(cfg.feed.bind ? " (bind)" : " (connect)")", "alerts": "\(cfg.alerts.endpoint)",
            "query": "\(cfg.query.endpoint)", "state": "\(stateDir)", "models_restored": "\(core.engines.count)",
            "next_alert_seq": "\(alertLog.nextSequence)", "zmq": "\(ZMQVersion.string)", "kernels": "\(FilterBank.kernelISA)",
            "idle_refits": "\(cfg.idleRefits)",
        ])
        if !cfg.alertmanager.urls.isEmpty {
            do {
                let f = try AlertmanagerForwarder(configuration: cfg, stats: delivery, logger: logger)
                f.start()
                core.forwarder = f
            } catch {
                readyState.withLock { $0 = "failed: \(error.message)" }
                throw error
            }
        }
        readyState.withLock { $0 = "ready" }
        notifier.notify("READY=1\nSTATUS=\(core.statusLine)\nMAINPID=\(getpid())")

        let poll = ZMQPollSet()
        let feedIndex = poll.add(feed)
        let repIndex = poll.add(rep)
        let message = ZMQMultipart(maxFrames: 4)
        let request = ZMQMultipart(maxFrames: 3)
        let clock = ContinuousClock()
        var nextWatchdog = clock.now
        var nextSnapshot = clock.now + .seconds(core.configuration.state.snapshotInterval)
        var nextStatus = clock.now
        var nextPeriodic = clock.now + .seconds(5)

        func flushOutbox() {
            for (topic, body) in core.outbox {
                do {
                    _ = try pub.send(topic, more: true)
                    _ = try pub.send(body)
                } catch {
                    logger.error("alert publish failed (the alert is in the durable log)", metadata: ["error": "\(error)"])
                }
            }
            core.outbox.removeAll(keepingCapacity: true)
        }
        let snapshotCounter = metrics.snapshots, snapshotFailures = metrics.snapshotFailures, log = logger
        let health = snapshotHealth, snapshotTime = metrics.lastSnapshot
        let onSnapshot: @Sendable (Result<String, SaliencyError>) -> Void = { r in
            switch r {
            case .success:
                snapshotCounter.increment()
                snapshotTime.set(Date().timeIntervalSince1970)
                health.succeeded()
            case .failure(let e):
                snapshotFailures.increment()
                health.failed(e.message)
                log.error("snapshot failed; learned state since the last snapshot is at risk", metadata: ["error": "\(e.message)"])
            }
        }
        /// Background write on the interval; synchronous for the admin query and at shutdown.
        func snapshotNow(wait: Bool) -> Result<String, SaliencyError> {
            store.write(core, wait: wait, completion: onSnapshot) ?? .success(store.currentPath)
        }

        loop: while !stopRequested.load(ordering: .acquiring) {
            do {
                // Waiting status pages (one served per turn) shorten the wait to none.
                _ = try poll.poll(timeout: pages.waiting > 0 ? 0 : 100)
            } catch let e where e.isTerminated {
                break loop
            } catch {
                logger.error("poll failed", metadata: ["error": "\(error)"])
                continue
            }
            var busy = false
            if poll.ready(feedIndex).contains(.pollIn) {
                // Drain a bounded batch so queries and timers stay responsive under load.
                for _ in 0..<512 {
                    do {
                        guard try feed.receive(into: message, dontWait: true) else { break }
                    } catch let e where e.isTerminated {
                        break loop
                    } catch {
                        logger.error("feed receive failed", metadata: ["error": "\(error)"])
                        break
                    }
                    busy = true
                    if message.totalCount > message.count {
                        core.reject(.malformedFrame, "message with \(message.totalCount) frames; at most 3 expected")
                        continue
                    }
                    let arrived = clock.now
                    core.handleFeed(count: message.count, message: message, userID: message.property("User-Id")) { message.frame($0) }
                    if !core.outbox.isEmpty {
                        flushOutbox()
                        let d = clock.now - arrived
                        core.recordAlertLatency(Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) * 1e-12)
                    }
                }
            }
            if poll.ready(repIndex).contains(.pollIn) {
                // The query socket is a ROUTER that speaks REQ/REP's envelope itself: libzmq's REP
                // state machine lost replies to honest clients while peers sent garbage (measured:
                // 6 of 300 requests with one random-bytes TCP connection open at a time). Only
                // `[peer id][empty][one JSON frame]` is answered; anything else is counted and
                // dropped. Up to 32 requests per turn, fair-queued over peers by libzmq.
                for _ in 0..<32 {
                    do {
                        guard try rep.receive(into: request, dontWait: true) else { break }
                        guard request.count >= 2, request.frame(1).count == 0 else {
                            core.reject(.badQuery, "query message without the REQ envelope (\(request.totalCount) frames); use a REQ socket, or DEALER sending an empty frame first")
                            continue
                        }
                        metrics.queries.increment()
                        let reply: [UInt8]
                        if request.totalCount != 3 {
                            core.reject(.badQuery, "request with \(request.totalCount - 2) frames")
                            reply = QueryReply.error(code: .badRequest, message: "send exactly one frame holding a JSON object")
                        } else {
                            let admin = !cfg.security.curve || request.property("User-Id", frame: 2).map { adminKeys.contains($0) } == true
                            reply = core.handleQuery(request.frame(2), admin: admin, snapshot: { snapshotNow(wait: true) }, lastSnapshot: store.lastWritten,
                                                     snapshotHealth: snapshotHealth.value)
                        }
                        // Never blocks: a peer whose unread replies reach query.max_inflight loses
                        // them (ROUTER drops instead of queueing without bound).
                        _ = try rep.send(request.frame(0), more: true, dontWait: true)
                        _ = try rep.send(UnsafeRawBufferPointer(start: nil, count: 0), more: true, dontWait: true)
                        _ = try rep.send(reply, dontWait: true)
                    } catch let e where e.isTerminated {
                        break loop
                    } catch {
                        logger.error("query socket error", metadata: ["error": "\(error)"])
                        break
                    }
                }
            }
            // Idle refits (≈ 0.4 ms at K-filter banks) keep alert latency low after a burst, but
            // make WHEN a filter is refit, relative to the rows, depend on load; with
            // pot.idle_refits = false only the update path refits, and the learned state is a
            // function of the accepted rows alone (deterministic replay).
            if !busy, core.configuration.idleRefits { _ = core.idleRefits(limit: 16) }
            let now = clock.now
            alertLog.syncIfDue(now: now)
            core.resendIfDue(now: now)
            if !core.outbox.isEmpty { flushOutbox() }
            if let w = notifier.watchdogInterval, now >= nextWatchdog {
                notifier.notify("WATCHDOG=1")
                nextWatchdog = now + w
            }
            // Periodic work on its own clock: calibration progress marks the status line dirty
            // every few rows, and must not postpone expiry, log summaries or metrics.
            if now >= nextPeriodic {
                core.expireIdleModels(now: now)
                core.logLimiter.flush(logger, now: now)
                core.publishPeriodicMetrics()
                nextPeriodic = now + .seconds(5)
            }
            if now >= nextStatus || core.statusDirty {
                notifier.notify("STATUS=\(core.statusLine)")
                core.statusDirty = false
                nextStatus = now + .seconds(5)
            }
            if now >= nextSnapshot {
                _ = snapshotNow(wait: false)
                nextSnapshot = now + .seconds(core.configuration.state.snapshotInterval)
            }
            // Status pages: one per turn, a bounded read of the state (≤ 8 queued; the HTTP side
            // gives up after its timeout and a given-up ticket is skipped). The biggest, a model
            // page, scores every filter three times (heat map, top by POT and by z): 79 ms at
            // K = 26,560 in a debug build; one per turn keeps feed and queries between them.
            for t in pages.take(limit: 1) where !t.isDone {
                t.complete(.answer(core.statusPage(t.request, lastSnapshot: store.lastWritten, snapshotHealth: snapshotHealth.value)))
            }
            if let newConfig = reloadMailbox.withLock({ c -> DaemonConfiguration? in defer { c = nil }; return c }) {
                let needRestart = newConfig.restartRequired(comparedTo: core.configuration)
                if needRestart.isEmpty {
                    if newConfig.idleRefits != core.configuration.idleRefits {
                        logger.notice("pot.idle_refits changed", metadata: ["idle_refits": "\(newConfig.idleRefits)",
                            "effect": "\(newConfig.idleRefits ? "due filters are also refit when the feed is idle" : "refits only on the update path (pot.refits_per_row): deterministic replay")"])
                    }
                    let oldAlertmanager = core.configuration.alertmanager
                    core.apply(reloaded: newConfig)
                    if newConfig.alertmanager != oldAlertmanager { reloadAlertmanager(core) }
                    alertLog.setMaxEntries(newConfig.alerts.logMaxEntries)
                    logger.notice("configuration reloaded")
                } else {
                    logger.warning("configuration reload refused: these settings need a restart (systemctl restart saliencyd); the running configuration is unchanged", metadata: ["sections": "\(needRestart.joined(separator: ","))"])
                }
                notifier.notify("READY=1\nSTATUS=\(core.statusLine)")
            }
        }
        notifier.notify("STOPPING=1\nSTATUS=stopping: writing state")
        logger.notice("stopping: writing final snapshot")
        // Delivers what is queued for Alertmanager while the snapshot is written (at most 3 s).
        core.forwarder?.requestStop(deadline: .seconds(3))
        store.drain()
        let final = snapshotNow(wait: true)
        alertLog.syncNow()
        core.forwarder?.waitStopped()
        zap?.stop()
        if case .failure(let e) = final {
            finalSnapshotFailed.store(true, ordering: .releasing)
            logger.critical("final snapshot failed: learned state since the last good snapshot is lost; exiting non-zero", metadata: ["error": "\(e.message)", "state": "\(stateDir)"])
        }
        logger.notice("stopped", metadata: ["alert_seq": "\(alertLog.nextSequence - 1)"])
    }


    /// `[alertmanager]` changed on reload: the running forwarder flushes (1 s) and ends on its own
    /// thread, a new one takes over and gets the firing set at once. Never waits.
    func reloadAlertmanager(_ core: DaemonCore) {
        if let old = core.forwarder {
            old.detach()
            old.requestStop(deadline: .seconds(1))
        }
        core.forwarder = nil
        core.lastAlertmanagerSync = nil
        let c = core.configuration
        guard !c.alertmanager.urls.isEmpty else {
            delivery.update { s in
                s.enabled = false; s.targets = []; s.queued = 0; s.firing = 0; s.capacity = 0
            }
            logger.notice("alert delivery to Alertmanager turned off by reload")
            return
        }
        do {
            let f = try AlertmanagerForwarder(configuration: c, stats: delivery, logger: logger)
            f.start()
            core.forwarder = f
        } catch {
            logger.error("alert delivery not restarted after reload", metadata: ["error": "\(error.message)"])
        }
    }

    /// Replies queued per query peer before libzmq drops them (see `openSockets`): with
    /// `query.max_reply_bytes` this bounds what a peer that never reads can claim (32 × 256 KiB
    /// = 8 MiB at the defaults). 32 is the smallest that never dropped a reply to a client that
    /// reads every one (libzmq's read accounting lags by HWM/2 messages).
    static let replyQueue: Int32 = 32

    struct Sockets: ~Copyable {
        let feed: ZMQSocket
        let pub: ZMQSocket
        let rep: ZMQSocket
    }

    /// Creates, secures and binds the three sockets. Errors say which endpoint failed.
    func openSockets(_ cfg: DaemonConfiguration, adminKeys: inout Set<String>) throws(SaliencyError) -> Sockets {
        let sec = cfg.security
        var serverSecret: String?
        if sec.curve {
            let pair = try CurveKeyPair.load(from: sec.serverSecretKeyFile)
            serverSecret = pair.secretKey
            let allowed = try Self.readKeys(sec.allowedClientsFile)
            adminKeys = Set(try Self.readKeys(sec.adminClientsFile))
            let handler = try ZAPHandler(context: context, allowedClientKeys: allowed + Array(adminKeys), domain: "saliencyd")
            do { try handler.start() } catch { throw error.saliencyError }
            zap = handler
            logger.notice("CURVE enabled", metadata: ["allowed_clients": "\(allowed.count)", "admin_clients": "\(adminKeys.count)", "server_public_key": "\(pair.publicKey)"])
        }
        func secure(_ s: borrowing ZMQSocket) throws(ZMQError) {
            guard let secret = serverSecret else { return }
            try s.setCurveServer(true)
            try s.setCurveSecretKey(z85: secret)
            try s.setZAPDomain("saliencyd")
        }
        func step<T: ~Copyable>(_ what: String, _ body: () throws(ZMQError) -> T) throws(SaliencyError) -> T {
            do { return try body() } catch {
                throw SaliencyError(.transport, "\(what): \(error) — is another saliencyd (or program) using the endpoint? check the endpoint syntax and permissions")
            }
        }
        let feed = try step("feed socket \(cfg.feed.endpoint)") { () throws(ZMQError) -> ZMQSocket in
            let s = try context.socket(.sub)
            try secure(s)
            try s.setAffinity(1)
            try s.setHandshakeInterval(5000)
            try s.setReceiveHighWaterMark(Int32(clamping: cfg.feed.receiveHighWaterMark))
            try s.setMaxMessageSize(Int64(cfg.feed.maxMessageBytes))
            try s.subscribe(Topic.predictionPrefix)
            try s.subscribe(Topic.schemaPrefix)
            if cfg.feed.bind { try s.bind(cfg.feed.endpoint) } else { try s.connect(cfg.feed.endpoint) }
            return s
        }
        let pub = try step("alerts socket \(cfg.alerts.endpoint)") { () throws(ZMQError) -> ZMQSocket in
            let s = try context.socket(.pub)
            try secure(s)
            try s.setAffinity(2)
            try s.setHandshakeInterval(5000)
            try s.setSendHighWaterMark(100_000)
            // Subscribers send only subscriptions: a peer sending more is disconnected.
            try s.setMaxMessageSize(4096)
            try s.bind(cfg.alerts.endpoint)
            return s
        }
        let rep = try step("query socket \(cfg.query.endpoint)") { () throws(ZMQError) -> ZMQSocket in
            let s = try context.socket(.router)
            try secure(s)
            try s.setAffinity(2)
            try s.setHandshakeInterval(5000)
            // Per peer: at most max_inflight requests queued (beyond, TCP pushes the peer back); a
            // frame larger than a request may be (64 KiB) disconnects the peer unread. Replies a
            // peer does not read are dropped past `replyQueue` per peer: libzmq learns of reads
            // only every HWM/2 messages, so a send HWM as small as max_inflight dropped replies to
            // clients that read every one (measured: 1 in 7–1000 at HWM 4).
            try s.setReceiveHighWaterMark(Int32(cfg.query.maxInflight))
            try s.setSendHighWaterMark(Self.replyQueue)
            try s.setMaxMessageSize(Int64(QueryRequest.maxBytes + 1024))
            try s.setBacklog(256)
            try s.bind(cfg.query.endpoint)
            return s
        }
        return Sockets(feed: feed, pub: pub, rep: rep)
    }

    static func readKeys(_ path: String) throws(SaliencyError) -> [String] {
        guard !path.isEmpty else { return [] }
        // Bare keys, `public = KEY` lines, ZeroMQ public certificates, or a certificate directory.
        return try CurveKeyPair.readPublicKeyList(path)
    }
}

/// Snapshot failures so far and the last reason (the snapshot queue writes, `status` reads).
final class SnapshotHealth: Sendable {
    private let state = Mutex<(failures: UInt64, error: String?)>((0, nil))
    func succeeded() { state.withLock { $0.error = nil } }
    func failed(_ reason: String) { state.withLock { $0.failures &+= 1; $0.error = reason } }
    var value: (failures: UInt64, error: String?) { state.withLock { $0 } }
}
