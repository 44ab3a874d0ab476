import EVTOnline
import Foundation
import SaliencyCore
import SaliencyStream

/// Everything an operator may tune, with embedded defaults: `saliencyd` runs with no file at all.
/// The file is TOML (see systemd/saliencyd.toml for every key, documented); command-line flags
/// override it. Unknown keys and wrong types are errors that name the key and what it expects.
public struct DaemonConfiguration: Sendable, Hashable {
    public struct Feed: Sendable, Hashable {
        public var endpoint = "tcp://127.0.0.1:5560"
        /// Bind (producers connect) or connect (to a producer or an XPUB proxy).
        public var bind = true
        /// ZMQ_MAXMSGSIZE: larger frames are dropped by libzmq before they reach the daemon.
        public var maxMessageBytes = 16 << 20
        /// ZMQ_RCVHWM per producer: beyond it libzmq drops (PUB/SUB); drops show as sequence gaps.
        public var receiveHighWaterMark = 2000
    }
    public struct Alerts: Sendable, Hashable {
        public var endpoint = "tcp://127.0.0.1:5561"
        /// Seconds between re-sends of firing alerts (late subscribers catch up).
        public var resendInterval = 30.0
        /// Alert log retention: entries kept on disk and answerable by `alerts --since`.
        public var logMaxEntries = 100_000
    }
    public struct Query: Sendable, Hashable {
        public var endpoint = "tcp://127.0.0.1:5562"
        /// Requests one peer may have queued (and replies waiting for it to read): libzmq's
        /// per-connection high-water marks on the query socket. Beyond it the peer is throttled
        /// (its TCP window closes) and undelivered replies are dropped, never buffered.
        public var maxInflight = 4
        /// Largest reply; `alerts` answers are cut to fit (`"truncated": true`, continue with `since`).
        /// With the 32 replies libzmq queues per peer, this bounds what a client that never reads
        /// its replies can claim: 32 × 256 KiB = 8 MiB per connection.
        public var maxReplyBytes = 256 << 10
    }
    public struct State: Sendable, Hashable {
        /// Empty: `$STATE_DIRECTORY` when run by systemd, else `./saliencyd-state`.
        public var directory = ""
        /// Seconds between snapshots of learned state (a crash loses at most this much).
        public var snapshotInterval = 60.0
    }
    public struct Metrics: Sendable, Hashable {
        /// `host:port` of the Prometheus `/metrics` endpoint; empty disables it.
        public var listen = "127.0.0.1:9464"
    }
    /// What one peer's input may claim (docs/security.md): admission of schemas against memory
    /// budgets, expiry of models nobody feeds, bounded tables and metric cardinality.
    public struct Limits: Sendable, Hashable {
        /// A schema whose full learned state (calibration buffer, rings, columns, window, alert
        /// state) would exceed this is refused (`over_budget`). 1 GiB fits a ResNet-152-sized model.
        public var maxModelBytes = 1 << 30
        /// The same, summed over all admitted models.
        public var maxTotalBytes = 4 << 30
        /// Layers per schema.
        public var maxLayers = 4096
        /// Producer ids tracked for sequence gaps (least recently seen forgotten first).
        public var maxProducers = 1024
        /// Per-layer metric series over all models; layers beyond it are summed as `layer="_other"`.
        public var maxLayerSeries = 2048
        /// Seconds after which a model still calibrating that no accepted row reached is forgotten
        /// (it has learned nothing that a restart of its producer would not relearn); 0 = never.
        public var calibratingIdleExpiry = 3600.0
        /// Seconds after which a calibrated model that no accepted row reached is forgotten, with
        /// its learned state. 0 = never (the default: learned state is never dropped unasked).
        public var idleExpiry = 0.0
        /// A schema with another layout under a live model's name: `refuse` it (the default; reset
        /// the model first) or `replace` the name's mapping (the old layout stays until it expires).
        public var layoutChange = "refuse"
    }
    public struct Security: Sendable, Hashable {
        /// CURVE on every socket. Needs `server_secret_key_file`.
        public var curve = false
        public var serverSecretKeyFile = ""
        /// Files with one Z85 client public key per line; empty: no client is allowed when curve is on.
        public var allowedClientsFile = ""
        /// Clients allowed to send state-changing queries (snapshot, reset).
        public var adminClientsFile = ""
        /// Which client keys may announce which models (lines `KEY model…`, `*` = any model).
        /// Empty: any allowed client may announce any model.
        public var schemaKeysFile = ""
    }
    public struct Monitor: Sendable, Hashable {
        /// Recent valid rows kept per model for `top` over a window (memory: rows × K × 4 bytes).
        public var recentRows = 32
        /// Most models one daemon accepts (schemas beyond it are refused and counted).
        public var maxModels = 16
        /// Log level: trace, debug, info, notice, warning, error, critical.
        public var logLevel = "info"
        /// Per-event log lines (gaps, new producers, rejected input, refused schemas) allowed per
        /// kind per minute; the rest are counted and reported in one "suppressed" line.
        public var logBurst = 20
    }

    /// Native delivery to Prometheus Alertmanager (docs/operations.md "Alertmanager";
    /// AlertmanagerForwarder.swift). Off unless `urls` is set.
    public struct Alertmanager: Sendable, Hashable {
        /// Base URLs (`http://host:9093`, optionally with a path prefix); every alert goes to each
        /// one's `/api/v2/alerts`, as Prometheus does for an HA pair. Empty: delivery off.
        public var urls: [String] = []
        /// Seconds allowed for one POST (connect, write, and reading the response).
        public var timeout = 5.0
        /// Seconds between re-sends of every firing alert. Alertmanager resolves an alert it has
        /// not heard of for `resolve_timeout` (5 min by default), so this must stay well below it.
        public var resendInterval = 60.0
        /// Alerts the engine may hand over before the forwarder takes them; beyond it, counted drops.
        public var queueCapacity = 10_000
        /// Alerts per POST.
        public var batchSize = 64
        /// Cap, in seconds, of the exponential back-off between failed POSTs to one Alertmanager.
        public var maxBackoff = 30.0
        /// Base of each alert's `generatorURL`; empty: `http://` + metrics.listen.
        public var externalURL = ""
    }

    public var feed = Feed()
    public var alerts = Alerts()
    public var query = Query()
    public var state = State()
    public var metrics = Metrics()
    public var security = Security()
    public var monitor = Monitor()
    public var limits = Limits()
    public var alertmanager = Alertmanager()
    public var pot = POTConfiguration()
    /// `[models.NAME]`: what one model (the schema's `model`) does differently from `[pot]`
    /// (docs/operations.md, "Per-model settings"). Each key left out is the `[pot]` value.
    public struct ModelOverride: Sendable, Hashable {
        public var tails: TailSelection?
        public var transform: RowTransformKind?
        public var q: Double?
        public var calibration: Int?
        public init(tails: TailSelection? = nil, transform: RowTransformKind? = nil, q: Double? = nil, calibration: Int? = nil) {
            self.tails = tails; self.transform = transform; self.q = q; self.calibration = calibration
        }
        /// The keys this table sets, in `modelKeys` order.
        public var keys: [String] {
            [("tails", tails != nil), ("transform", transform != nil), ("q", q != nil), ("calibration", calibration != nil)].filter(\.1).map(\.0)
        }
    }
    /// Per-model overrides of `[pot]`, by model name (at most `maxModelTables`).
    public var models: [String: ModelOverride] = [:]
    /// Most `[models.NAME]` tables one file may hold (a hostile or generated file cannot make the
    /// daemon hold an unbounded table).
    public static let maxModelTables = 1024
    /// The keys a `[models.NAME]` table accepts.
    static let modelKeys = ["tails", "transform", "q", "calibration"]

    /// The `[pot]` settings model `name` is learned with: `[pot]` with its `[models.NAME]` keys on top.
    public func pot(for name: String) -> POTConfiguration {
        guard let o = models[name] else { return pot }
        var p = pot
        if let v = o.tails { p.tails = v }
        if let v = o.transform { p.transform = v }
        if let v = o.q { p.q = v }
        if let v = o.calibration { p.calibration = v }
        return p
    }

    /// Where `pot(for:)`'s settings come from, for log lines: `[pot]`, or `[models.NAME] over [pot]`.
    func settingsSource(for name: String) -> String {
        models[name] == nil ? "[pot]" : "[models.\(Self.quotedName(name))] over [pot]"
    }

    /// `[pot] idle_refits`: whether the engine thread also refits due filters when the feed is idle
    /// (true, the default: due fits land sooner after a burst). With false, refits happen only on
    /// the update path (`pot.refits_per_row`), so the learned state is a function of the accepted
    /// row sequence alone: replaying the same feed gives bit-identical state whatever the timing
    /// (docs/operations.md, "Deterministic replay"). Applied by a reload (it decides only whether
    /// idle time is used), so it lives outside `POTConfiguration`, whose changes need a restart.
    public var idleRefits = true
    public var alerting = AlertBudget()
    /// The alert rule meets its budget at `safety_factor × q`: streaming SPOT's realized per-filter
    /// exceedance rate runs above q (measured 1.8–2.2·q on average at calibration 1000–2000, higher
    /// for unlucky filters; docs/alerting.md), so the default is 4.
    public var alertSafetyFactor = 4.0
    /// Where the model-level alert's null sample comes from: `cross_fit` (default: 2-fold
    /// cross-fitting on the calibration rows, the CUSUM runs from the first monitored row) or
    /// `burn_in` (the first `model_burn_in` monitored rows; docs/alerting.md §4).
    public var modelNullSample: ModelShiftNullSample = .crossFit
    /// Predictions after calibration used to estimate the model-level alert's null rate when
    /// `model_null_sample = "burn_in"` (and the cross-fit's fallback).
    public var modelBurnIn = 10_000

    /// The model-level rule the daemon gives every model (before `AlertRule.design` sets its ERT).
    public var modelShiftRule: ModelShiftRule { ModelShiftRule(burnIn: modelBurnIn, nullSample: modelNullSample) }

    public init() {}

    /// The state directory after defaults: explicit, `$STATE_DIRECTORY` (systemd), or `./saliencyd-state`.
    public var resolvedStateDirectory: String {
        if !state.directory.isEmpty { return state.directory }
        if let s = ProcessInfo.processInfo.environment["STATE_DIRECTORY"], !s.isEmpty {
            return String(s.split(separator: ":").first ?? Substring(s))
        }
        return FileManager.default.currentDirectoryPath + "/saliencyd-state"
    }

    /// Checks every value; the error names the key and the accepted range.
    public func validate() throws(SaliencyError) {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.invalidConfiguration, m) }
        for (key, ep) in [("feed.endpoint", feed.endpoint), ("alerts.endpoint", alerts.endpoint), ("query.endpoint", query.endpoint)] {
            guard ep.hasPrefix("tcp://") || ep.hasPrefix("ipc://") || ep.hasPrefix("inproc://") else {
                throw bad("\(key) = \"\(ep)\" is not a ZeroMQ endpoint; use tcp://HOST:PORT or ipc:///path")
            }
        }
        guard Set([feed.endpoint, alerts.endpoint, query.endpoint]).count == 3 else {
            throw bad("feed.endpoint, alerts.endpoint and query.endpoint must differ")
        }
        func range<T: Comparable>(_ key: String, _ v: T, _ r: ClosedRange<T>, _ unit: String = "") throws(SaliencyError) {
            guard r.contains(v) else { throw bad("\(key) must be in \(r.lowerBound)...\(r.upperBound)\(unit), got \(v)") }
        }
        func finite(_ key: String, _ v: Double, _ r: ClosedRange<Double>, _ unit: String) throws(SaliencyError) {
            guard v.isFinite, r.contains(v) else { throw bad("\(key) must be a finite number in \(r.lowerBound)...\(r.upperBound)\(unit), got \(v)") }
        }
        try range("feed.max_message_bytes", feed.maxMessageBytes, 1024...(1 << 30), " bytes")
        try range("feed.receive_hwm", feed.receiveHighWaterMark, 1...1_000_000, " messages per producer")
        try finite("alerts.resend_interval", alerts.resendInterval, 0.1...86_400, " seconds")
        try range("alerts.log_max_entries", alerts.logMaxEntries, 100...10_000_000)
        try finite("state.snapshot_interval", state.snapshotInterval, 1...86_400, " seconds")
        try range("query.max_inflight", query.maxInflight, 1...1000, " requests per peer")
        try range("query.max_reply_bytes", query.maxReplyBytes, 4096...(64 << 20), " bytes")
        try range("limits.max_model_bytes", limits.maxModelBytes, (1 << 16)...(1 << 46), " bytes")
        try range("limits.max_total_bytes", limits.maxTotalBytes, limits.maxModelBytes...(1 << 48), " bytes (at least limits.max_model_bytes)")
        try range("limits.max_layers", limits.maxLayers, 1...ModelSchema.maxLayers)
        try range("limits.max_producers", limits.maxProducers, 1...1_000_000)
        try range("limits.max_layer_series", limits.maxLayerSeries, 0...100_000)
        try finite("limits.calibrating_idle_expiry", limits.calibratingIdleExpiry, 0...31_536_000, " seconds (0 = never)")
        try finite("limits.idle_expiry", limits.idleExpiry, 0...315_360_000, " seconds (0 = never)")
        guard ["refuse", "replace"].contains(limits.layoutChange) else {
            throw bad("limits.layout_change = \"\(limits.layoutChange)\"; use \"refuse\" or \"replace\"")
        }
        try range("monitor.log_burst", monitor.logBurst, 1...100_000, " lines per kind per minute")
        if !metrics.listen.isEmpty {
            guard let c = metrics.listen.lastIndex(of: ":"), let p = Int(metrics.listen[metrics.listen.index(after: c)...]), (0...65535).contains(p) else {
                throw bad("metrics.listen = \"\(metrics.listen)\" must be HOST:PORT (or \"\" to disable)")
            }
        }
        if security.curve, security.serverSecretKeyFile.isEmpty {
            throw bad("security.curve = true needs security.server_secret_key_file (create one with `saliencyctl keygen`)")
        }
        if !security.curve, !security.allowedClientsFile.isEmpty || !security.adminClientsFile.isEmpty || !security.schemaKeysFile.isEmpty {
            throw bad("security.allowed_clients_file, admin_clients_file and schema_keys_file need security.curve = true (without CURVE no client is authenticated, so the lists would protect nothing)")
        }
        try range("monitor.recent_rows", monitor.recentRows, 1...10_000)
        try range("monitor.max_models", monitor.maxModels, 1...4096)
        guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(monitor.logLevel) else {
            throw bad("monitor.log_level = \"\(monitor.logLevel)\"; use trace, debug, info, notice, warning, error or critical")
        }
        try validateAlertmanager()
        do { try pot.validate() } catch { throw bad("[pot] \(error.message)") }
        try validateModels()
        do { try alerting.validate() } catch { throw bad("[alerting] \(error.message)") }
        guard modelBurnIn >= 100, modelBurnIn <= 10_000_000 else { throw bad("alerting.model_burn_in must be in 100...10000000 predictions, got \(modelBurnIn)") }
        guard alertSafetyFactor >= 1, alertSafetyFactor <= 100 else { throw bad("alerting.safety_factor must be in 1...100, got \(alertSafetyFactor)") }
    }

    /// Keys whose change needs a restart (sockets are bound, learned state depends on them).
    public func restartRequired(comparedTo old: DaemonConfiguration) -> [String] {
        var out: [String] = []
        if feed != old.feed { out.append("feed") }
        if alerts.endpoint != old.alerts.endpoint { out.append("alerts.endpoint") }
        if query != old.query { out.append("query") }
        if state.directory != old.state.directory { out.append("state.directory") }
        if metrics != old.metrics { out.append("metrics") }
        if security != old.security { out.append("security") }
        // [alertmanager] is applied by a reload (EngineLoop replaces the forwarder), except the
        // generatorURL default, which follows metrics.listen (itself restart-only).
        if pot != old.pot { out.append("pot") }   // pot.idle_refits (`idleRefits`) is applied by a reload
        // [models.NAME]: each added, removed or changed table (a model's learned state depends on it).
        let changed = Set(models.keys).union(old.models.keys).filter { models[$0] != old.models[$0] }.sorted()
        out += changed.prefix(8).map { "models.\(Self.quotedName($0))" }
        if changed.count > 8 { out.append("models (\(changed.count - 8) more)") }
        if alerting != old.alerting || alertSafetyFactor != old.alertSafetyFactor || modelBurnIn != old.modelBurnIn || modelNullSample != old.modelNullSample { out.append("alerting") }
        if monitor.recentRows != old.monitor.recentRows || monitor.maxModels != old.monitor.maxModels { out.append("monitor.recent_rows/max_models") }
        if limits.maxProducers != old.limits.maxProducers || limits.maxLayerSeries != old.limits.maxLayerSeries { out.append("limits.max_producers/max_layer_series") }
        return out
    }

    // MARK: - TOML

    /// Every accepted key, per section (the unknown-key check and `--check-config` use it).
    static let knownKeys: [String: [String]] = [
        "feed": ["endpoint", "bind", "max_message_bytes", "receive_hwm"],
        "alerts": ["endpoint", "resend_interval", "log_max_entries"],
        "query": ["endpoint", "max_inflight", "max_reply_bytes"],
        "state": ["directory", "snapshot_interval"],
        "metrics": ["listen"],
        "security": ["curve", "server_secret_key_file", "allowed_clients_file", "admin_clients_file", "schema_keys_file"],
        "monitor": ["recent_rows", "max_models", "log_level", "log_burst"],
        "limits": ["max_model_bytes", "max_total_bytes", "max_layers", "max_producers", "max_layer_series", "calibrating_idle_expiry", "idle_expiry", "layout_change"],
        "pot": ["level", "q", "calibration", "max_peaks", "min_peaks", "refit_after_peaks", "refits_per_row", "idle_refits", "drift_window", "peak_stride", "tails", "transform"],
        "alerting": ["expected_run_time", "model_share", "safety_factor", "model_burn_in", "model_null_sample"],
        "alertmanager": ["urls", "timeout", "resend_interval", "queue_capacity", "batch_size", "max_backoff", "external_url"],
    ]

    /// Parses TOML text over the defaults. Errors carry the line/column or the key path.
    public static func parse(toml text: String, source: String = "configuration") throws(SaliencyError) -> DaemonConfiguration {
        let table: TOMLReader.Document
        do {
            table = try TOMLReader.parse(text)
        } catch {
            throw SaliencyError(.invalidConfiguration, "\(source): TOML syntax error at line \(error.line), column \(error.column): \(error.message)")
        }
        var c = DaemonConfiguration()
        var problems: [String] = []
        for key in table.keys.sorted() where key == "models" {
            for k in table[key]!.keys.sorted() {
                problems.append("models.\(quotedName(k)) must be a table: per-model settings go under [models.NAME] (e.g. [models.\(quotedName(k))] tails = \"both\")")
            }
        }
        for key in table.keys.sorted() where key != "models" {
            guard let known = knownKeys[key] else {
                problems.append("unknown section [\(key)]\(suggest(key, knownKeys.keys.sorted()))")
                continue
            }
            for k in table[key]!.keys.sorted() where !known.contains(k) {
                problems.append("unknown key \(key).\(k)\(suggest(k, known))")
            }
        }
        func value<T>(_ section: String, _ key: String, _ kind: String, _ get: (TOMLReader.Value) -> T?) -> T? {
            guard let v = table[section]?[key] else { return nil }
            if let x = get(v) { return x }
            problems.append("\(section).\(key) must be \(kind), got \(v.typeName)")
            return nil
        }
        func str(_ s: String, _ k: String) -> String? { value(s, k, "a string") { if case .string(let x) = $0 { x } else { nil } } }
        func int(_ s: String, _ k: String) -> Int? { value(s, k, "an integer") { if case .int(let x) = $0 { x } else { nil } } }
        func dbl(_ s: String, _ k: String) -> Double? {
            value(s, k, "a number") { v -> Double? in
                switch v { case .double(let x): x; case .int(let x): Double(x); default: nil }
            }
        }
        func bool(_ s: String, _ k: String) -> Bool? { value(s, k, "true or false") { if case .bool(let x) = $0 { x } else { nil } } }

        if let v = str("feed", "endpoint") { c.feed.endpoint = v }
        if let v = bool("feed", "bind") { c.feed.bind = v }
        if let v = int("feed", "max_message_bytes") { c.feed.maxMessageBytes = v }
        if let v = int("feed", "receive_hwm") { c.feed.receiveHighWaterMark = v }
        if let v = str("alerts", "endpoint") { c.alerts.endpoint = v }
        if let v = dbl("alerts", "resend_interval") { c.alerts.resendInterval = v }
        if let v = int("alerts", "log_max_entries") { c.alerts.logMaxEntries = v }
        if let v = str("query", "endpoint") { c.query.endpoint = v }
        if let v = int("query", "max_inflight") { c.query.maxInflight = v }
        if let v = int("query", "max_reply_bytes") { c.query.maxReplyBytes = v }
        if let v = int("limits", "max_model_bytes") { c.limits.maxModelBytes = v }
        if let v = int("limits", "max_total_bytes") { c.limits.maxTotalBytes = v }
        if let v = int("limits", "max_layers") { c.limits.maxLayers = v }
        if let v = int("limits", "max_producers") { c.limits.maxProducers = v }
        if let v = int("limits", "max_layer_series") { c.limits.maxLayerSeries = v }
        if let v = dbl("limits", "calibrating_idle_expiry") { c.limits.calibratingIdleExpiry = v }
        if let v = dbl("limits", "idle_expiry") { c.limits.idleExpiry = v }
        if let v = str("limits", "layout_change") { c.limits.layoutChange = v }
        if let v = str("security", "schema_keys_file") { c.security.schemaKeysFile = v }
        if let v = int("monitor", "log_burst") { c.monitor.logBurst = v }
        if let v = str("state", "directory") { c.state.directory = v }
        if let v = dbl("state", "snapshot_interval") { c.state.snapshotInterval = v }
        if let v = str("metrics", "listen") { c.metrics.listen = v }
        if let v = bool("security", "curve") { c.security.curve = v }
        if let v = str("security", "server_secret_key_file") { c.security.serverSecretKeyFile = v }
        if let v = str("security", "allowed_clients_file") { c.security.allowedClientsFile = v }
        if let v = str("security", "admin_clients_file") { c.security.adminClientsFile = v }
        if let v = int("monitor", "recent_rows") { c.monitor.recentRows = v }
        if let v = int("monitor", "max_models") { c.monitor.maxModels = v }
        if let v = str("monitor", "log_level") { c.monitor.logLevel = v }
        if let v = dbl("pot", "level") { c.pot.level = v }
        if let v = dbl("pot", "q") { c.pot.q = v }
        if let v = int("pot", "calibration") { c.pot.calibration = v }
        if let v = int("pot", "max_peaks") { c.pot.maxPeaks = v }
        if let v = int("pot", "min_peaks") { c.pot.minPeaks = v }
        if let v = int("pot", "refit_after_peaks") { c.pot.refitAfterPeaks = v }
        if let v = dbl("pot", "refits_per_row") { c.pot.refitsPerRow = v }
        if let v = bool("pot", "idle_refits") { c.idleRefits = v }
        if let v = int("pot", "drift_window") { c.pot.driftWindow = v }
        if let v = int("pot", "peak_stride") { c.pot.peakStride = v }
        if let v = str("pot", "tails") {
            if let t = TailSelection(rawValue: v) { c.pot.tails = t } else { problems.append("pot.tails must be \"upper\", \"lower\" or \"both\", got \"\(v)\"") }
        }
        if let v = str("pot", "transform") {
            if let t = RowTransformKind(rawValue: v) { c.pot.transform = t } else { problems.append("pot.transform must be \"none\", \"layer-logres\" or \"layer-ratio\", got \"\(v)\"") }
        }
        if let v = dbl("alerting", "expected_run_time") { c.alerting.expectedRunTime = v }
        if let v = dbl("alerting", "model_share") { c.alerting.modelShare = v }
        if let v = dbl("alerting", "safety_factor") { c.alertSafetyFactor = v }
        if let v = int("alerting", "model_burn_in") { c.modelBurnIn = v }
        if let v = str("alerting", "model_null_sample") {
            if let m = ModelShiftNullSample(rawValue: v) { c.modelNullSample = m } else { problems.append("alerting.model_null_sample must be \"cross_fit\" or \"burn_in\", got \"\(v)\"") }
        }
        if let v = value("alertmanager", "urls", "an array of strings", { v -> [String]? in
            guard case .array(let items) = v else { return nil }
            var out: [String] = []
            for i in items { guard case .string(let x) = i else { return nil }; out.append(x) }
            return out
        }) { c.alertmanager.urls = v }
        if let v = dbl("alertmanager", "timeout") { c.alertmanager.timeout = v }
        if let v = dbl("alertmanager", "resend_interval") { c.alertmanager.resendInterval = v }
        if let v = int("alertmanager", "queue_capacity") { c.alertmanager.queueCapacity = v }
        if let v = int("alertmanager", "batch_size") { c.alertmanager.batchSize = v }
        if let v = dbl("alertmanager", "max_backoff") { c.alertmanager.maxBackoff = v }
        if let v = str("alertmanager", "external_url") { c.alertmanager.externalURL = v }
        for parent in table.subtables.keys.sorted() where parent != "models" {
            problems.append("unknown table [\(quotedName(parent)).\(quotedName(table.subtables[parent]!.keys.sorted().first ?? ""))]: the only nested tables are [models.NAME] (per-model settings)")
        }
        parseModels(table.subtables["models"] ?? [:], into: &c, problems: &problems)
        if !problems.isEmpty {
            throw SaliencyError(.invalidConfiguration, "\(source): " + problems.joined(separator: "; "))
        }
        return c
    }

    /// `[models.NAME]` tables: keys `tails`, `transform`, `q`, `calibration` (`modelKeys`).
    static func parseModels(_ tables: [String: [String: TOMLReader.Value]], into c: inout DaemonConfiguration, problems: inout [String]) {
        guard tables.count <= maxModelTables else {
            problems.append("\(tables.count) [models.NAME] tables; at most \(maxModelTables)")
            return
        }
        for name in tables.keys.sorted() {
            let t = tables[name]!
            let where_ = "models.\(quotedName(name))"
            guard Topic.isValidModelName(name.utf8) else {
                problems.append("[\(where_)]: \"\(printable(name.utf8.prefix(64)))\" is not a model name (1–128 printable ASCII bytes, no spaces or dots; the schema's \"model\")")
                continue
            }
            var o = ModelOverride()
            for k in t.keys.sorted() {
                let v = t[k]!
                switch (k, v) {
                case ("tails", .string(let x)):
                    if let e = TailSelection(rawValue: x) { o.tails = e } else { problems.append("\(where_).tails must be \"upper\", \"lower\" or \"both\", got \"\(x.prefix(64))\"") }
                case ("transform", .string(let x)):
                    if let e = RowTransformKind(rawValue: x) { o.transform = e } else { problems.append("\(where_).transform must be \"none\", \"layer-logres\" or \"layer-ratio\", got \"\(x.prefix(64))\"") }
                case ("q", .double(let x)): o.q = x
                case ("q", .int(let x)): o.q = Double(x)
                case ("calibration", .int(let x)): o.calibration = x
                case ("tails", _), ("transform", _): problems.append("\(where_).\(k) must be a string, got \(v.typeName)")
                case ("q", _): problems.append("\(where_).q must be a number, got \(v.typeName)")
                case ("calibration", _): problems.append("\(where_).calibration must be an integer, got \(v.typeName)")
                default:
                    let other = knownKeys["pot"]!.contains(k) ? " ([pot] \(k) is one setting for all models; a model table takes only \(modelKeys.joined(separator: ", ")))" : suggest(k, modelKeys)
                    problems.append("unknown key \(where_).\(k)\(other)")
                }
            }
            c.models[name] = o
        }
    }

    /// A model name as a TOML table-name part: bare when it is a bare key, else quoted (escaped).
    static func quotedName(_ name: String) -> String {
        let bare = !name.isEmpty && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F || $0 == 0x2D }
        if bare { return name }
        return "\"" + printable(name.utf8.prefix(128)).replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// Checks `models`: the table count, each name, each model's effective `[pot]` settings.
    func validateModels() throws(SaliencyError) {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.invalidConfiguration, m) }
        guard models.count <= Self.maxModelTables else { throw bad("[models] has \(models.count) model tables; at most \(Self.maxModelTables)") }
        for name in models.keys.sorted() {
            guard Topic.isValidModelName(name.utf8) else {
                throw bad("[models.\(Self.quotedName(name))]: not a model name (1–128 printable ASCII bytes, no spaces or dots)")
            }
            do { try pot(for: name).validate() } catch {
                throw bad("[models.\(Self.quotedName(name))] (over [pot]): \(error.message)")
            }
        }
    }

    /// Loads a file (`parse(contents:source:)`); `validate()` checks the values.
    public static func load(path: String) throws(SaliencyError) -> DaemonConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SaliencyError(.invalidConfiguration, "cannot read configuration file '\(path)' (missing or unreadable)")
        }
        return try parse(contents: [UInt8](data), source: path)
    }

    /// Largest configuration file accepted (1 MiB; the example with every key is ~8 KiB).
    public static let maxFileBytes = 1 << 20

    /// Parses a configuration file's raw bytes. The TOML parser reads C strings, so a NUL byte
    /// would silently end the file early (and drop e.g. `[security] curve = true` after it):
    /// NUL bytes, invalid UTF-8, an empty file and oversized files are refused, naming the offset.
    public static func parse(contents bytes: [UInt8], source: String = "configuration") throws(SaliencyError) -> DaemonConfiguration {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.invalidConfiguration, "\(source): \(m)") }
        guard bytes.count <= maxFileBytes else { throw bad("file is \(bytes.count) bytes; the limit is \(maxFileBytes)") }
        guard !bytes.isEmpty else {
            throw bad("file is empty; give at least one key (a comment-only file is fine), or drop --config to run on the embedded defaults")
        }
        if let nul = bytes.firstIndex(of: 0) {
            let line = bytes[..<nul].reduce(1) { $0 + ($1 == 0x0A ? 1 : 0) }
            throw bad("NUL byte at offset \(nul) (line \(line)); a configuration file is UTF-8 text")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            var offset = 0
            // Find the first offset where decoding fails, for the message.
            var it = bytes.makeIterator()
            var dec = UTF8()
            var consumed = 0
            loop: while true {
                switch dec.decode(&it) {
                case .scalarValue(let s): consumed += UTF8.width(s); offset = consumed
                case .emptyInput: break loop
                case .error: break loop
                }
            }
            throw bad("invalid UTF-8 near offset \(offset); a configuration file is UTF-8 text")
        }
        return try parse(toml: text, source: source)
    }

    static func suggest(_ key: String, _ candidates: [String]) -> String {
        func distance(_ a: String, _ b: String) -> Int {
            let a = Array(a), b = Array(b)
            var prev = Array(0...b.count)
            for i in 1...max(a.count, 1) where !a.isEmpty {
                var cur = [i] + Array(repeating: 0, count: b.count)
                for j in 1...max(b.count, 1) where !b.isEmpty {
                    cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
                }
                prev = cur
            }
            return prev[b.count]
        }
        guard let best = candidates.min(by: { distance(key, $0) < distance(key, $1) }), distance(key, best) <= 3 else { return "" }
        return " (did you mean '\(best)'?)"
    }
}

extension DaemonConfiguration {
    /// Peaks per filter below which the first GPD fits are too noisy to trust (see `warnings`).
    public static let recommendedInitialPeaks = 50.0

    /// Valid settings that are probably not what the operator wants, each saying what to change.
    /// Printed by `--check-config` and logged at start; never fatal.
    public var warnings: [String] {
        var out: [String] = []
        let initialPeaks = Double(pot.calibration) * (1 - pot.level)
        if !alertmanager.urls.isEmpty, alertmanager.resendInterval > Self.alertmanagerResendWarning {
            out.append("alertmanager.resend_interval = \(alertmanager.resendInterval) s: Alertmanager resolves an alert it has not heard of for resolve_timeout (5 min by default), so one or two failed re-sends would resolve a firing alert. Use 60 (the default) or less.")
        }
        if !alertmanager.urls.isEmpty, alertmanager.externalURL.isEmpty, metrics.listen.isEmpty {
            out.append("alertmanager: metrics.listen is off and alertmanager.external_url is empty, so alerts carry no generatorURL. Set alertmanager.external_url to where the daemon's pages are reachable.")
        } else if !alertmanager.urls.isEmpty, alertmanager.externalURL.isEmpty, metrics.listen.hasPrefix("0.0.0.0:") || metrics.listen.hasPrefix("[::]:") {
            out.append("alertmanager: generatorURL would be http://\(metrics.listen) (a wildcard address, not reachable from a browser); set alertmanager.external_url to the daemon's public http://host:port.")
        }
        if modelNullSample == .crossFit, alerting.modelShare > 0 {
            // Each fold of the model-level cross-fit calibrates on half the calibration rows.
            var half = pot
            half.calibration = pot.calibration / 2
            if let problem = (Result { () throws(SaliencyError) in try half.validate() }).failureMessage {
                out.append("alerting.model_null_sample = \"cross_fit\" calibrates each fold on half of pot.calibration = \(pot.calibration) rows, which is not a valid calibration (\(problem)): every model's ModelShift alert falls back to a burn-in of model_burn_in = \(modelBurnIn) predictions after calibration. Raise pot.calibration, or set model_null_sample = \"burn_in\" to say so.")
            }
        }
        if pot.refitsPerRow == 0, !idleRefits {
            out.append("pot.refits_per_row = 0 with pot.idle_refits = false: no filter is ever refit after calibration, so the tail models never follow the data. Set refits_per_row > 0 (e.g. 0.25, the default) or idle_refits = true.")
        }
        if initialPeaks < Self.recommendedInitialPeaks {
            let needed = Int((Self.recommendedInitialPeaks / (1 - pot.level)).rounded(.up))
            out.append("pot.calibration × (1 − pot.level) = \(Int(initialPeaks.rounded())) peaks per filter for the first GPD fits; with fewer than \(Int(Self.recommendedInitialPeaks)) the extreme thresholds are noisy and, until refits have seen more peaks, filters exceed them several times more often than q (BENCHMARKS.md: 2–6× q at 20 peaks). Raise pot.calibration to \(needed) or lower pot.level.")
        }
        // The same two checks for models whose table sets their own calibration.
        for name in models.keys.sorted() {
            guard let cal = models[name]!.calibration else { continue }
            let key = "models.\(Self.quotedName(name)).calibration"
            let peaks = Double(cal) * (1 - pot.level)
            if peaks < Self.recommendedInitialPeaks {
                out.append("\(key) × (1 − pot.level) = \(Int(peaks.rounded())) peaks per filter for that model's first GPD fits; with fewer than \(Int(Self.recommendedInitialPeaks)) its extreme thresholds are noisy (BENCHMARKS.md: 2–6× q at 20 peaks). Raise it to \(Int((Self.recommendedInitialPeaks / (1 - pot.level)).rounded(.up))).")
            }
            if modelNullSample == .crossFit, alerting.modelShare > 0 {
                var half = pot(for: name)
                half.calibration = cal / 2
                if let problem = (Result { () throws(SaliencyError) in try half.validate() }).failureMessage {
                    out.append("\(key) = \(cal): each fold of the model-level cross-fit calibrates on half of it, which is not a valid calibration (\(problem)): that model's ModelShift alert falls back to a burn-in of model_burn_in = \(modelBurnIn) predictions. Raise it.")
                }
            }
        }
        return out
    }

    /// Effective settings as TOML-like text (for `--check-config`).
    public var effectiveSummary: String {
        """
        [feed]     endpoint = "\(feed.endpoint)"  bind = \(feed.bind)  max_message_bytes = \(feed.maxMessageBytes)  receive_hwm = \(feed.receiveHighWaterMark)
        [alerts]   endpoint = "\(alerts.endpoint)"  resend_interval = \(alerts.resendInterval)  log_max_entries = \(alerts.logMaxEntries)
        [query]    endpoint = "\(query.endpoint)"
        [state]    directory = "\(resolvedStateDirectory)"  snapshot_interval = \(state.snapshotInterval)
        [metrics]  listen = "\(metrics.listen)"
        [security] curve = \(security.curve)
        [query]    max_inflight = \(query.maxInflight)  max_reply_bytes = \(query.maxReplyBytes)
        [monitor]  recent_rows = \(monitor.recentRows)  max_models = \(monitor.maxModels)  log_level = "\(monitor.logLevel)"  log_burst = \(monitor.logBurst)
        [limits]   max_model_bytes = \(limits.maxModelBytes)  max_total_bytes = \(limits.maxTotalBytes)  max_layers = \(limits.maxLayers)  max_producers = \(limits.maxProducers)  max_layer_series = \(limits.maxLayerSeries)  calibrating_idle_expiry = \(limits.calibratingIdleExpiry)  idle_expiry = \(limits.idleExpiry)  layout_change = "\(limits.layoutChange)"
        [pot]      level = \(pot.level)  q = \(pot.q)  calibration = \(pot.calibration)  max_peaks = \(pot.maxPeaks)  min_peaks = \(pot.minPeaks)  refit_after_peaks = \(pot.refitAfterPeaks)  refits_per_row = \(pot.refitsPerRow)  idle_refits = \(idleRefits)  drift_window = \(pot.driftWindow)  peak_stride = \(pot.peakStride == 0 ? "auto" : String(pot.peakStride))  tails = \(pot.tails.rawValue)  transform = \(pot.transform.rawValue)
        [alerting] expected_run_time = \(alerting.expectedRunTime)  model_share = \(alerting.modelShare)  safety_factor = \(alertSafetyFactor)  model_null_sample = "\(modelNullSample.rawValue)"  model_burn_in = \(modelBurnIn)
        [alertmanager] urls = [\(alertmanager.urls.map { "\"\($0)\"" }.joined(separator: ", "))]\(alertmanager.urls.isEmpty ? " (delivery off)" : "")  timeout = \(alertmanager.timeout)  resend_interval = \(alertmanager.resendInterval)  queue_capacity = \(alertmanager.queueCapacity)  batch_size = \(alertmanager.batchSize)  max_backoff = \(alertmanager.maxBackoff)  external_url = "\(alertmanagerExternalURL)"
        """ + modelsSummary
    }

    /// One line per `[models.NAME]` table: the model's effective settings and which keys it sets
    /// (every other model: the `[pot]` line).
    var modelsSummary: String {
        models.keys.sorted().map { name in
            let p = pot(for: name)
            return "\n[models.\(Self.quotedName(name))]  tails = \(p.tails.rawValue)  transform = \(p.transform.rawValue)  q = \(p.q)  calibration = \(p.calibration)  (set here: \(models[name]!.keys.joined(separator: ", ")); the rest from [pot])"
        }.joined()
    }
}

// MARK: - [alertmanager]

extension DaemonConfiguration {
    /// Above this `alertmanager.resend_interval` (seconds) `warnings` advises a shorter one.
    public static let alertmanagerResendWarning = 150.0

    /// `alertmanager.external_url` after defaults, without a trailing slash: explicit, else
    /// `http://` + metrics.listen, else "" (alerts then carry no generatorURL).
    public var alertmanagerExternalURL: String {
        var u = alertmanager.externalURL.isEmpty ? (metrics.listen.isEmpty ? "" : "http://" + metrics.listen) : alertmanager.externalURL
        while u.hasSuffix("/") { u.removeLast() }
        return u
    }

    func validateAlertmanager() throws(SaliencyError) {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.invalidConfiguration, m) }
        let a = alertmanager
        guard a.urls.count <= 16 else { throw bad("alertmanager.urls has \(a.urls.count) entries; at most 16") }
        for u in a.urls {
            do { _ = try HTTPEndpoint(parsing: u) } catch { throw bad("alertmanager.urls: \(error.message)") }
        }
        guard Set(a.urls).count == a.urls.count else { throw bad("alertmanager.urls lists a URL twice") }
        func finite(_ key: String, _ v: Double, _ r: ClosedRange<Double>) throws(SaliencyError) {
            guard v.isFinite, r.contains(v) else { throw bad("alertmanager.\(key) must be a finite number in \(r.lowerBound)...\(r.upperBound) seconds, got \(v)") }
        }
        try finite("timeout", a.timeout, 0.1...60)
        guard a.resendInterval.isFinite, a.resendInterval >= 1, a.resendInterval < 300 else {
            throw bad("alertmanager.resend_interval must be a finite number of seconds in 1..<300 (below Alertmanager's default resolve_timeout of 5 min, or firing alerts resolve between re-sends), got \(a.resendInterval)")
        }
        try finite("max_backoff", a.maxBackoff, 0.1...3600)
        guard (10...1_000_000).contains(a.queueCapacity) else { throw bad("alertmanager.queue_capacity must be in 10...1000000 alerts, got \(a.queueCapacity)") }
        guard (1...10_000).contains(a.batchSize) else { throw bad("alertmanager.batch_size must be in 1...10000 alerts per POST, got \(a.batchSize)") }
        if !a.externalURL.isEmpty {
            guard a.externalURL.hasPrefix("http://") || a.externalURL.hasPrefix("https://"),
                  a.externalURL.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw bad("alertmanager.external_url = \"\(a.externalURL)\" must be an http:// or https:// URL without spaces (the base of each alert's generatorURL)")
            }
        }
    }
}

private extension Result where Failure == SaliencyError {
    /// The error's message, nil on success.
    var failureMessage: String? {
        if case .failure(let e) = self { return e.message }
        return nil
    }
}
