import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import SaliencyCore
import SaliencyStream
import ServiceLifecycle
import UnixSignals

/// Runs saliencyd: engine thread + Prometheus endpoint + SIGHUP reload, under a ServiceGroup
/// that shuts down gracefully on SIGTERM/SIGINT (state flushed, exit 0).
public enum SaliencyDaemon {
    /// - Parameters:
    ///   - load: re-reads the configuration (file + flags) — called at start and on SIGHUP.
    /// - Returns: the process exit code.
    public static func run(load: @escaping @Sendable () throws(SaliencyError) -> DaemonConfiguration) async -> Int32 {
        MessageMemory.keepFreedMemory()   // no page fault + zeroing per received row (MessageMemory)
        // A file-size limit (RLIMIT_FSIZE) must fail a write with EFBIG, not kill the daemon.
        signal(SIGXFSZ, SIG_IGN)
        let configuration: DaemonConfiguration
        do {
            configuration = try load()
            try configuration.validate()
        } catch {
            FileHandle.standardError.write(Data("saliencyd: configuration error: \(error.message)\n".utf8))
            return 2
        }
        let level = Logger.Level(rawValue: configuration.monitor.logLevel) ?? .info
        LoggingSystem.bootstrap { DaemonLogHandler(label: $0, level: level) }
        let logger = Logger(label: "saliencyd")
        for w in configuration.warnings { logger.warning("configuration", metadata: ["advice": "\(w)"]) }
        // Every saliencyd family is created in this registry through MetricCatalog (help text from
        // one table). The swift-metrics factory stays bootstrapped for libraries; anything that
        // registers through it has no # HELP, which test_prometheus.py catches (promtool lint).
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let notifier = SystemdNotifier()
        let loop: EngineLoop
        do {
            loop = try EngineLoop(configuration: configuration, logger: logger, notifier: notifier, registry: registry)
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error.message)"])
            return 1
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: EngineService(loop: loop), successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: ReloadService(loop: loop, load: load, notifier: notifier, logger: logger), successTerminationBehavior: .ignore, failureTerminationBehavior: .ignore),
        ]
        if !configuration.metrics.listen.isEmpty, let colon = configuration.metrics.listen.lastIndex(of: ":"),
           let port = Int(configuration.metrics.listen[configuration.metrics.listen.index(after: colon)...]) {
            let host = String(configuration.metrics.listen[..<colon])
            loop.metrics.publishBuildInfo(version: DaemonCore.version)
            let process = ProcessMetrics(registry: registry), delivery = DeliveryMetrics(stats: loop.delivery, registry: registry)
            services.append(.init(service: MetricsServer(registry: registry, host: host, port: port, logger: logger,
                                                         beforeScrape: { process.update(); delivery.update() },
                                                         pages: loop.pages, delivery: loop.delivery),
                                  successTerminationBehavior: .ignore, failureTerminationBehavior: .ignore))
        }
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch {
            logger.critical("stopped with an error", metadata: ["error": "\(error)"])
            return 1
        }
        let state = loop.readyState.withLock { $0 }
        if state.hasPrefix("failed") || loop.finalSnapshotFailed.load(ordering: .acquiring) {
            return 1
        }
        return withExtendedLifetime(loop) { 0 }
    }
}

/// Runs the engine loop on its own Thread (never on the cooperative pool).
struct EngineService: Service {
    let loop: EngineLoop

    func run() async throws {
        let failure: SaliencyError? = await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (done: CheckedContinuation<SaliencyError?, Never>) in
                    let t = Thread { [loop] in
                        do {
                            try loop.run()
                            done.resume(returning: nil)
                        } catch {
                            done.resume(returning: (error as Any as? SaliencyError) ?? SaliencyError(.transport, "\(error)"))
                        }
                    }
                    t.name = "saliencyd-engine"
                    t.stackSize = 8 << 20
                    t.start()
                }
            } onCancel: {
                loop.requestStop()
            }
        } onGracefulShutdown: {
            loop.requestStop()
        }
        if let e = failure {
            loop.logger.critical("engine failed to start", metadata: ["error": "\(e.message)"])
            throw e
        }
    }
}

/// SIGHUP: re-read the configuration (systemd reload protocol: RELOADING=1 … READY=1).
struct ReloadService: Service {
    let loop: EngineLoop
    let load: @Sendable () throws(SaliencyError) -> DaemonConfiguration
    let notifier: SystemdNotifier
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await withGracefulShutdownHandler {
            for await _ in signals.cancelOnGracefulShutdown() {
                notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(SystemdNotifier.monotonicMicroseconds)")
                do {
                    let c = try load()
                    try c.validate()
                    loop.requestReload(c)   // the engine answers READY=1 when applied or refused
                } catch {
                    logger.error("configuration reload failed; keeping the running configuration", metadata: ["error": "\(error.message)"])
                    notifier.notify("READY=1")
                }
            }
        } onGracefulShutdown: {}
    }
}

/// Prometheus text exposition on `GET /metrics` (plain SwiftNIO; see docs/toolchain.md §4), and
/// the status page: `/`, `/model/<name>`, `/filter/<name>/<index>` (docs/status-page.md), whose
/// data come from the engine thread through `pages` (a bounded mailbox, answered within
/// `pageTimeout` or 503) and are rendered by `StatusPage` (StatusPage.swift).
struct MetricsServer: Service {
    let registry: PrometheusCollectorRegistry
    let host: String
    let port: Int
    let logger: Logger
    /// Runs before each `/metrics` exposition (values read at scrape time: process, delivery).
    var beforeScrape: @Sendable () -> Void = {}
    /// The engine's status-page mailbox (nil: the pages answer 503).
    var pages: StatusMailbox? = nil
    /// Alertmanager delivery counts, shown on the overview when the forwarder is enabled.
    var delivery: DeliveryStats? = nil
    /// How long a page waits for the engine before answering 503.
    var pageTimeout: Duration = .seconds(2)

    func run() async throws {
        let server: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: host, port: port) { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                        return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: ch)
                    }
                }
        } catch {
            logger.error("metrics endpoint disabled: cannot listen", metadata: ["listen": "\(host):\(port)", "error": "\(error)"])
            return
        }
        logger.info("metrics endpoint listening", metadata: ["url": "http://\(host):\(port)/metrics"])
        do {
            try await cancelWhenGracefulShutdown {
                try await withThrowingDiscardingTaskGroup { group in
                    try await server.executeThenClose { conns in
                        for try await c in conns { group.addTask { try? await serve(c) } }
                    }
                }
            }
        } catch is CancellationError {
        } catch {
            logger.warning("metrics endpoint stopped", metadata: ["error": "\(error)"])
        }
    }

    private func serve(_ c: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async throws {
        try await c.executeThenClose { inbound, outbound in
            for try await part in inbound {
                guard case .head(let req) = part else { continue }
                let r = await respond(method: req.method, uri: req.uri)
                var headers: HTTPHeaders = ["Content-Type": r.type, "Content-Length": "\(r.body.count)"]
                for (k, v) in r.headers { headers.add(name: k, value: v) }
                try await outbound.write(.head(.init(version: req.version, status: r.status, headers: headers)))
                if req.method != .HEAD { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: r.body)))) }
                try await outbound.write(.end(nil))
            }
        }
    }

    struct Response {
        var status: HTTPResponseStatus
        var type: String
        var body: [UInt8]
        var headers: [(String, String)] = []
    }

    /// Headers of every HTML page: no script can run (the pages have none), nothing is cached.
    static let htmlHeaders = [("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:"),
                              ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]

    static func html(_ status: HTTPResponseStatus, _ text: String, extra: [(String, String)] = []) -> Response {
        Response(status: status, type: "text/html; charset=utf-8", body: Array(text.utf8), headers: htmlHeaders + extra)
    }

    static func errorPage(_ status: HTTPResponseStatus, _ title: String, _ detail: String, uri: String, extra: [(String, String)] = []) -> Response {
        html(status, StatusPage.error(status: Int(status.code), title: title, detail: detail, path: uri), extra: extra)
    }

    func respond(method: HTTPMethod, uri: String) async -> Response {
        switch StatusPage.route(method: method.rawValue, uri: uri) {
        case .metrics:
            var body: [UInt8] = []
            beforeScrape()
            registry.emit(into: &body)
            return Response(status: .ok, type: "text/plain; version=0.0.4", body: body)
        case .methodNotAllowed:
            return Self.errorPage(.methodNotAllowed, "Method Not Allowed", "Only GET and HEAD are served here.", uri: uri, extra: [("Allow", "GET, HEAD")])
        case .uriTooLong:
            return Self.errorPage(.uriTooLong, "URI Too Long", "The request path is longer than \(StatusPage.maxURIBytes) bytes.", uri: uri)
        case .badRequest(let why):
            return Self.errorPage(.badRequest, "Bad Request", why, uri: uri)
        case .notFound(let why):
            return Self.errorPage(.notFound, "Not Found", why, uri: uri)
        case .page(let request):
            guard let pages else {
                return Self.errorPage(.serviceUnavailable, "Service Unavailable", "The status page is not connected to the engine.", uri: uri)
            }
            switch await pages.ask(request, timeout: pageTimeout) {
            case .answer(.overview(let p)):
                return Self.html(.ok, StatusPage.overview(p, delivery: delivery?.snapshot()))
            case .answer(.model(let p)):
                return Self.html(.ok, StatusPage.model(p))
            case .answer(.filter(let p)):
                return Self.html(.ok, StatusPage.filter(p))
            case .answer(.notFound(let why)):
                return Self.errorPage(.notFound, "Not Found", why, uri: uri)
            case .busy:
                logger.debug("status page refused: mailbox full", metadata: ["uri": "\(uri.prefix(200))"])
                return Self.errorPage(.serviceUnavailable, "Service Unavailable",
                                      "\(pages.capacity) status-page requests are already waiting for the engine; retry in a second.", uri: uri, extra: [("Retry-After", "1")])
            case .timeout:
                logger.debug("status page timed out waiting for the engine", metadata: ["uri": "\(uri.prefix(200))"])
                return Self.errorPage(.serviceUnavailable, "Service Unavailable",
                                      "The engine did not answer within \(pageTimeout) (busy with the feed, or starting); retry shortly.", uri: uri, extra: [("Retry-After", "1")])
            case .stopped:
                return Self.errorPage(.serviceUnavailable, "Service Unavailable", "The engine has stopped (the daemon is shutting down).", uri: uri)
            }
        }
    }
}
