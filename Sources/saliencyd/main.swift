import ArgumentParser
import Foundation
import SaliencyCore
import SaliencyMonitor

@main
struct Saliencyd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "saliencyd",
        abstract: "Watches a ZeroMQ feed of per-filter CNN saliencies; publishes extreme-value alerts; answers queries.",
        discussion: """
        With no file and no flags it runs on loopback: feed SUB tcp://127.0.0.1:5560 (bind), alerts PUB
        tcp://127.0.0.1:5561, queries REP tcp://127.0.0.1:5562, state in ./saliencyd-state (or
        $STATE_DIRECTORY under systemd), metrics on http://127.0.0.1:9464/metrics.
        Flags override the configuration file. SIGHUP re-reads it; SIGTERM stops cleanly (state written).
        """,
        version: "saliencyd \(SaliencyVersion.string)")

    @Option(help: "TOML configuration file (every key: systemd/saliencyd.toml).") var config: String?
    @Option(help: "Feed endpoint (ZeroMQ syntax, e.g. tcp://0.0.0.0:5560 or ipc:///run/saliencyd/feed).") var feed: String?
    @Flag(name: .customLong("feed-connect"), help: "Connect the feed socket instead of binding it (to a producer or an XPUB proxy).") var feedConnect = false
    @Option(help: "Alerts PUB endpoint.") var alerts: String?
    @Option(help: "Queries REP endpoint.") var query: String?
    @Option(name: .customLong("state-dir"), help: "State directory (snapshots, alert log).") var stateDir: String?
    @Option(help: "Calibration predictions per model (n_cal).") var calibration: Int?
    @Option(name: .customLong("snapshot-interval"), help: "Seconds between snapshots of learned state.") var snapshotInterval: Double?
    @Option(name: .customLong("metrics"), help: "HOST:PORT of the Prometheus endpoint, or \"\" to disable.") var metricsListen: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.") var logLevel: String?
    @Flag(name: .customLong("check-config"), help: "Validate the configuration, print the effective settings, and exit (0 valid, 2 invalid).") var checkConfig = false

    func loader() -> @Sendable () throws(SaliencyError) -> DaemonConfiguration {
        let (config, feed, feedConnect, alerts, query, stateDir, calibration, snapshotInterval, metricsListen, logLevel) =
            (self.config, self.feed, self.feedConnect, self.alerts, self.query, self.stateDir, self.calibration, self.snapshotInterval, self.metricsListen, self.logLevel)
        return { () throws(SaliencyError) -> DaemonConfiguration in
            var c = try config.map { (p: String) throws(SaliencyError) in try DaemonConfiguration.load(path: p) } ?? DaemonConfiguration()
            if let v = feed { c.feed.endpoint = v }
            if feedConnect { c.feed.bind = false }
            if let v = alerts { c.alerts.endpoint = v }
            if let v = query { c.query.endpoint = v }
            if let v = stateDir { c.state.directory = v }
            if let v = calibration { c.pot.calibration = v }
            if let v = snapshotInterval { c.state.snapshotInterval = v }
            if let v = metricsListen { c.metrics.listen = v }
            if let v = logLevel { c.monitor.logLevel = v }
            return c
        }
    }

    func run() async throws {
        let load = loader()
        if checkConfig {
            do {
                let c = try load()
                try c.validate()
                print(c.effectiveSummary)
                for w in c.warnings { print("warning: \(w)") }
                print("configuration OK")
                throw ExitCode.success
            } catch let e as SaliencyError {
                FileHandle.standardError.write(Data("saliencyd: configuration invalid: \(e.message)\n".utf8))
                throw ExitCode(2)
            }
        }
        let code = await SaliencyDaemon.run(load: load)
        if code != 0 { throw ExitCode(code) }
    }
}
