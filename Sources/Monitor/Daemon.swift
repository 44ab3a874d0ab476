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
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        DaemonMetrics.publishBuildInfo(version: DaemonCore.version)
        let notifier = SystemdNotifier()
        let loop: EngineLoop
        do {
            loop = try EngineLoop(configuration: configuration, logger: logger, notifier: notifier)
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
            services.append(.init(service: MetricsServer(registry: registry, host: host, port: port, logger: logger),
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

/// Prometheus text exposition on `GET /metrics` (plain SwiftNIO; see docs/toolchain.md §4).
struct MetricsServer: Service {
    let registry: PrometheusCollectorRegistry
    let host: String
    let port: Int
    let logger: Logger
    /// Runs before each `/metrics` exposition (values read at scrape time: process, delivery).
    var beforeScrape: @Sendable () -> Void = {}

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
                var body: [UInt8] = []
                let ok = req.method == .GET && (req.uri == "/metrics" || req.uri.hasPrefix("/metrics?"))
                if ok { beforeScrape(); registry.emit(into: &body) } else { body = Array("not found; try /metrics\n".utf8) }
                try await outbound.write(.head(.init(version: req.version, status: ok ? .ok : .notFound,
                                                     headers: ["Content-Type": "text/plain; version=0.0.4", "Content-Length": "\(body.count)"])))
                try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
                try await outbound.write(.end(nil))
            }
        }
    }
}
