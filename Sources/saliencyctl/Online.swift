import ArgumentParser
import Foundation
import SaliencyCore
import SaliencyStream

/// Endpoints and CURVE keys shared by every online command (same flags as saliencyd).
struct EndpointOptions: ParsableArguments {
    @Option(help: "Feed endpoint (replay publishes here).") var feed = "tcp://127.0.0.1:5560"
    @Option(help: "Alerts endpoint (alerts subscribes here).") var alerts = "tcp://127.0.0.1:5561"
    @Option(help: "Query endpoint.") var query = "tcp://127.0.0.1:5562"
    @Option(name: .customLong("server-key"), help: "CURVE: file with the daemon's public key (enables CURVE).") var serverKey: String?
    @Option(name: .customLong("client-key"), help: "CURVE: this client's key file (from saliencyctl keygen).") var clientKey: String?
    @Option(help: "Seconds to wait for an answer.") var timeout: Double = 5

    /// Applies CURVE client settings when `--server-key` is given.
    func secure(_ s: borrowing ZMQSocket) throws {
        guard let sk = serverKey else { return }
        guard let ck = clientKey else { throw InputError("--server-key needs --client-key (create one with saliencyctl keygen)") }
        let pair = try CurveKeyPair.load(from: ck)
        try s.setCurveServerKey(z85: try CurveKeyPair.loadPublicKey(from: sk))
        try s.setCurvePublicKey(z85: pair.publicKey)
        try s.setCurveSecretKey(z85: pair.secretKey)
    }
}

/// A REQ client with a timeout: one request, one JSON reply. A lost reply closes the socket
/// (REQ's state machine) and reports what to check.
struct QueryClient: ~Copyable {
    let context: ZMQContext
    let socket: ZMQSocket
    let endpoint: String

    init(_ o: EndpointOptions) throws {
        let ctx = try ZMQContext()
        let s = try Self.connect(ctx, o)
        self.context = ctx
        self.socket = s
        self.endpoint = o.query
    }

    private static func connect(_ ctx: ZMQContext, _ o: EndpointOptions) throws -> ZMQSocket {
        let s = try ctx.socket(.req)
        try o.secure(s)
        try s.setReceiveTimeout(Int32(o.timeout * 1000))
        try s.setSendTimeout(Int32(o.timeout * 1000))
        try s.connect(o.query)
        return s
    }

    /// Sends `request` and returns the raw reply body; throws a readable error when none comes.
    func send(_ request: QueryRequest) throws -> [UInt8] {
        guard try socket.send(request.body) else { throw CtlError("cannot send to \(endpoint): is saliencyd running?") }
        let reply = ZMQMultipart(maxFrames: 1)
        guard try socket.receive(into: reply) else {
            throw CtlError("no answer from \(endpoint) within the timeout: is saliencyd running, and are the endpoint and CURVE keys right?")
        }
        return reply.bytes(0)
    }

    /// Sends `request` and decodes the typed reply (`Wire.reply`); the daemon's error
    /// (`ok: false`) becomes a readable error that keeps the raw body for `--json`.
    func ask<T: Decodable>(_ request: QueryRequest, as type: T.Type) throws -> T {
        let raw = try send(request)
        do { return try Wire.reply(T.self, from: raw) } catch {
            throw CtlError("\(error.code.rawValue): \(error.message)", raw: raw)
        }
    }

    /// The reply body as the daemon sent it (for --json), after checking it is not an error.
    func askRaw(_ request: QueryRequest) throws -> [UInt8] {
        let raw = try send(request)
        do { _ = try Wire.reply(OKOnly.self, from: raw) } catch { throw CtlError("\(error.code.rawValue): \(error.message)", raw: raw) }
        return raw
    }
    private struct OKOnly: Decodable { var ok: Bool }
}

struct CtlError: Error, CustomStringConvertible {
    let description: String
    let raw: [UInt8]?
    init(_ d: String, raw: [UInt8]? = nil) { description = d; self.raw = raw }
}

func runCtl(_ json: Bool, _ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as CtlError {
        if json, let raw = e.raw { print(String(decoding: raw, as: UTF8.self)) }
        FileHandle.standardError.write(Data("saliencyctl: \(e.description)\n".utf8))
        throw ExitCode.failure
    }
}

func str(_ v: (some CustomStringConvertible)?) -> String { v.map { "\($0)" } ?? "-" }

struct Status: ParsableCommand {
    /// One cell for the model-level rule: "armed cross_fit r≥3 π0=0.002", "burning_in 120/10000", …
    static func describe(_ r: StatusReply.ModelRule?, firing: Bool) -> String {
        guard let r else { return "–" }
        switch r.state {
        case "armed":
            let src = r.source.map { " " + $0 } ?? ""
            let thr = r.row_threshold.map { " r≥\($0)" } ?? ""
            let pi = r.null_rate.map { " π0=\(fmt($0, 2))" } ?? ""
            return (firing ? "FIRING" : "armed") + src + thr + pi
        case "burning_in": return "burning in \(r.burn_in_seen ?? 0)/\(r.burn_in_total ?? 0)"
        case "waiting": return "armed at calibration end (\(r.source ?? "cross_fit"))"
        default: return r.state
        }
    }
    static let configuration = CommandConfiguration(abstract: "Daemon status: models, calibration, rates, drops, rejected input, firing alerts.")
    @OptionGroup var endpoints: EndpointOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try runCtl(output.json) {
            let c = try QueryClient(endpoints)
            if output.json { print(String(decoding: try c.askRaw(.status), as: UTF8.self)); return }
            let s = try c.ask(.status, as: StatusReply.self)
            print("saliencyd \(s.version), up \(fmt(s.uptime_s, 4)) s, state in \(s.state_directory), kernels \(s.kernels)")
            print("alerts: \(s.firing) firing, last seq \(s.alert_seq); sequence gaps \(s.gaps); queries \(s.queries)")
            var t = Table(headers: ["model", "quantity", "tails", "transform", "filters", "phase", "calibration", "rows", "rate/s", "firing", "due", "rule m/c/L", "model rule"])
            for m in s.models {
                let rule = m.alert_rule
                t.rows.append([m.model, m.quantity ?? "saliency", m.tails ?? "-", m.transform ?? "-", String(m.filters), m.phase, "\(m.calibration_seen)/\(m.calibration_total)",
                               String(m.rows), fmt(m.rate_per_s, 4), String(m.firing), String(m.due),
                               "\(rule.window)/\(rule.fire_count)/\(rule.resolve_below)", Self.describe(m.model_rule, firing: m.model_alert)])
            }
            print(t.rows.isEmpty ? "no models yet (waiting for schema messages)" : t.render())
            if !s.rejected.isEmpty { print("rejected input: " + s.rejected.keys.sorted().map { "\($0)=\(s.rejected[$0]!)" }.joined(separator: " ")) }
            for p in s.producers {
                print("producer \(p.producer) → \(p.model): received \(p.received), gaps \(p.gaps), reordered \(p.reordered)")
            }
            if s.producer_count > s.producers.count { print("… and \(s.producer_count - s.producers.count) more producers") }
            let l = s.limits, ps = s.persistence
            print("memory budget: \(l.admitted_bytes >> 20) of \(l.max_total_bytes >> 20) MiB admitted; log lines suppressed \(s.log_suppressed); models expired \(s.models_expired)")
            if ps.alert_log_failures > 0 || ps.snapshot_failures > 0 {
                print("PERSISTENCE FAILURES: alert log \(ps.alert_log_failures) (\(ps.alert_log_error ?? "recovered")), snapshots \(ps.snapshot_failures) (\(ps.snapshot_error ?? "recovered"))")
            }
        }
    }
}

struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The most salient filters of a model, now (like top(1) with --watch).",
        discussion: """
        With --watch on a terminal: a full-screen view (alternate screen) with a summary line (model, phase, rows,
        rate, firing alerts, time, refresh interval) and a fixed header, cut to the window; q or Ctrl-C quits and
        restores the terminal. With --watch into a pipe or file: the table again every --interval seconds, plain text.
        """)
    @Option(help: "Model name (as in its schema).") var model: String
    @Option(name: .shortAndLong, help: "How many filters.") var k = 20
    @Option(help: "Score: pot, zscore, or a common-mode-free scorer: logres-pot, logres-zscore, ratio-pot, ratio-zscore (the daemon answers these only for models whose [pot] transform is layer-logres or layer-ratio; pot/zscore are then answered on the transformed rows and the title names the scorer used), or pooled-zscore (z with σ pooled over the model's filters, for Taylor-blame rows; raw rows only).") var by: ScoreKind = .pot
    @Option(help: "Average the score over this many recent predictions (default: the latest only).") var window: Int?
    @Flag(help: "Refresh every --interval seconds until interrupted (q quits on a terminal).") var watch = false
    @Option(help: "Refresh interval for --watch.") var interval: Double = 1
    @OptionGroup var endpoints: EndpointOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard interval > 0, interval.isFinite else { throw ValidationError("--interval must be > 0 seconds") }
    }

    var request: QueryRequest { .top(model: model, k: k, by: by, window: window.map { .recent($0) } ?? .latest) }

    /// The table's columns, one place (a new score kind or column is added here).
    func table(_ r: TopReply) -> Table {
        // A direction column when the model watches the lower tail (the entries then say which).
        let twoSided = r.top.contains { $0.direction != nil }
        var t = Table(headers: ["rank", "filter", "layer", "channel", "score"] + (r.by.hasSuffix("pot") ? ["p"] : []) + (twoSided ? ["direction"] : []))
        for (i, e) in r.top.enumerated() {
            t.rows.append([String(i + 1), String(e.filter), e.layer, String(e.channel), fmt(e.score, 5)] + (r.by.hasSuffix("pot") ? [fmt(e.p ?? .nan, 4)] : [])
                          + (twoSided ? [e.direction ?? "upper"] : []))
        }
        return t
    }

    func title(_ r: TopReply) -> String { "\(model): top \(k) by \(r.by) over \(r.window) prediction(s)" }

    /// The full-screen view: summary line (from `status`), title, blank, header, rows.
    func screenLines(_ c: borrowing QueryClient) throws -> [String] {
        let r = try c.ask(request, as: TopReply.self)
        let s = try c.ask(.status, as: StatusReply.self)
        let clock = Date().formatted(.dateTime.hour(.twoDigits(amPM: .omitted)).minute(.twoDigits).second(.twoDigits))
        var summary = "\(model)"
        if let m = s.models.first(where: { $0.model == model }) {
            summary += "  phase \(m.phase)  rows \(m.rows)  rate \(fmt(m.rate_per_s, 4))/s  firing \(m.firing)"
        }
        summary += "  \(clock)  every \(fmt(interval, 3)) s  (q quits)"
        return [summary, title(r), ""] + table(r).render().split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    }

    func run() throws {
        try runCtl(output.json) {
            let c = try QueryClient(endpoints)
            if watch, !output.json, let screen = FullScreen.enter() {
                defer { screen.leave() }
                while true {
                    screen.draw(try screenLines(c))
                    if screen.waitForKey(interval) { break }
                }
                screen.leave()
                if let sig = screen.quitSignal, sig != SIGINT { throw ExitCode(128 + sig) }   // SIGTERM/SIGHUP: say so
                return
            }
            repeat {
                let r = try c.ask(request, as: TopReply.self)
                if output.json {
                    for e in r.top { print(String(decoding: Wire.encode(e), as: UTF8.self)) }
                } else {
                    // Not a terminal: plain text, once per interval, no escape codes.
                    print(title(r) + (watch ? "  \(Date())" : ""))
                    print(table(r).render())
                    if watch { print() }
                }
                fflush(nil)   // each refresh reaches a pipe or file at once
                if watch { Thread.sleep(forTimeInterval: interval) }
            } while watch
        }
    }
}

struct FilterCmd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "filter", abstract: "One filter's tail model, thresholds, counts and recent scores.")
    @Option(help: "Model name.") var model: String
    @Argument(help: "Global filter index (or use --layer and --channel).") var index: Int?
    @Option(help: "Layer name.") var layer: String?
    @Option(help: "Channel within --layer.") var channel: Int?
    @OptionGroup var endpoints: EndpointOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        if index == nil && (layer == nil || channel == nil) { throw ValidationError("give a filter index, or --layer and --channel") }
    }

    func run() throws {
        try runCtl(output.json) {
            let c = try QueryClient(endpoints)
            let req = QueryRequest.filter(model: model, selector: index.map { .index($0) } ?? .channel(layer: layer!, channel: channel!))
            if output.json { print(String(decoding: try c.askRaw(req), as: UTF8.self)); return }
            let r = try c.ask(req, as: FilterReply.self)
            print("\(model) filter \(r.filter) = \(r.layer)[\(r.channel)]  tail: \(r.tail)\(r.firing ? "  FIRING" : "")")
            print("threshold t = \(fmt(r.threshold)), extreme threshold z_q = \(fmt(r.extreme_threshold))")
            print("GPD shape γ = \(fmt(r.shape, 4)), scale σ = \(fmt(r.scale, 4)); n = \(r.n), peaks N_t = \(r.peaks) (ring \(r.peaks_in_ring), since fit \(r.peaks_since_fit)\(r.due ? ", refit due" : ""))")
            print("extremes = \(r.extremes) (\(r.window_exceedances) in the alert window); mean = \(fmt(r.mean)), std = \(fmt(r.std))")
            if let lo = r.lower {
                print("lower tail: \(lo.tail)\(lo.firing ? "  FIRING" : ""); t_low = \(fmt(lo.threshold)), z_low = \(fmt(lo.extreme_threshold)); γ = \(fmt(lo.shape, 4)), σ = \(fmt(lo.scale, 4)) (on log(t_low/s)); n₊ = \(lo.n), peaks = \(lo.peaks)")
                print("lower extremes = \(lo.extremes) (\(lo.window_exceedances) in the alert window); zeros = \(lo.zeros) (\(lo.calibration_zeros) in calibration, mode \(lo.zero_mode)\(lo.zero_run_threshold.map { ", extreme after \($0) in a row" } ?? ""), current run \(lo.zero_run))")
            }
            let twoSided = r.lower != nil
            var t = Table(headers: ["recent value", "score", "p", "z"] + (twoSided ? ["direction"] : []))
            for e in r.recent {
                t.rows.append([fmt(e.value), fmt(e.score, 4), fmt(e.p, 3), fmt(e.zscore, 3)] + (twoSided ? [e.direction ?? "upper"] : []))
            }
            if !t.rows.isEmpty { print(t.render()) }
        }
    }
}

struct Alerts: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List alerts, or follow them live (--follow), fetching any missed ones over the query socket.",
        discussion: "With --follow, a gap in sequence numbers (or a late start with --since) is filled from the daemon's durable alert log, so nothing is silently lost while the log retains it.")
    @Option(help: "Only alerts after this sequence number.") var since: UInt64?
    @Flag(help: "Only the currently firing alerts.") var active = false
    @Flag(help: "Firing alerts summarized per model and layer (how many filters, highest score).") var summary = false
    @Flag(help: "Keep running and print alerts as they are published.") var follow = false
    @Option(help: "With --follow: stop after this many seconds (0 = never).") var duration: Double = 0
    @OptionGroup var endpoints: EndpointOptions
    @OptionGroup var output: OutputOptions

    func printAlert(_ a: AlertMessage) throws {
        if output.json {
            print(String(decoding: Wire.encode(a), as: UTF8.self))
        } else {
            let what = a.filter.map { "\(a.layer)[\(str(a.channel))] filter \($0)" } ?? "model-level shift"
            print("#\(a.seq) \(a.status.rawValue.uppercased()) \(a.labels["model"] ?? a.model) \(what) score=\(fmt(a.score ?? .nan, 4)) exceedances=\(str(a.exceedances))/\(str(a.window)) at \(a.status == .resolved ? a.endsAt : a.startsAt)")
        }
        fflush(nil)   // line by line even when stdout is a pipe or file
    }

    func printSummary(_ c: borrowing QueryClient) throws {
        let r = try c.ask(.alerts(since: nil, active: true), as: AlertsReply.self)
        struct Group: Codable { var model: String; var layer: String; var firing: Int; var max_score: Double; var filters: [Int] }
        var groups: [String: Group] = [:]
        for a in r.alerts {
            var g = groups[a.model + "\u{0}" + a.layer] ?? Group(model: a.model, layer: a.layer, firing: 0, max_score: -.infinity, filters: [])
            g.firing += 1
            if let sc = a.score, !sc.isNaN { g.max_score = max(g.max_score, sc.isInfinite ? .greatestFiniteMagnitude : sc) }
            if let f = a.filter { g.filters.append(f) }
            groups[a.model + "\u{0}" + a.layer] = g
        }
        let sorted = groups.values.sorted { ($0.model, -$0.firing, $0.layer) < ($1.model, -$1.firing, $1.layer) }
        if output.json {
            for g in sorted { try IO.printJSON(g) }
            return
        }
        var t = Table(headers: ["model", "layer", "firing", "max score", "filters"])
        for g in sorted {
            let fs = g.filters.sorted()
            t.rows.append([g.model, g.layer, String(g.firing), fmt(g.max_score, 4), fs.prefix(8).map(String.init).joined(separator: ",") + (fs.count > 8 ? ",…" : "")])
        }
        print(t.rows.isEmpty ? "no firing alerts" : t.render())
    }

    func run() throws {
        try runCtl(output.json) {
            let c = try QueryClient(endpoints)
            if summary { try printSummary(c); return }
            var last = since ?? 0
            /// Prints retained alerts after `after` (following `truncated` replies) and returns the newest seq seen.
            func fetch(after: UInt64) throws -> UInt64 {
                var cursor = after
                while true {
                    let r = try c.ask(active ? .alerts(since: nil, active: true) : .alerts(since: cursor, active: false), as: AlertsReply.self)
                    var newest = cursor
                    for a in r.alerts where active || a.seq > newest { try printAlert(a); newest = max(newest, a.seq) }
                    if let oldest = r.oldest_retained, oldest > cursor + 1, cursor > 0 {
                        FileHandle.standardError.write(Data("saliencyctl: alerts \(cursor + 1)…\(oldest - 1) are past the daemon's log retention\n".utf8))
                    }
                    if active { return after }
                    if r.truncated == true, newest > cursor { cursor = newest; continue }
                    return max(newest, r.last_seq)
                }
            }
            guard follow else { _ = try fetch(after: last); return }
            let ctx = try ZMQContext()
            let sub = try ctx.socket(.sub)
            try endpoints.secure(sub)
            try sub.subscribe(Topic.alertPrefix)
            try sub.connect(endpoints.alerts)
            // Catch up from the log first (since: given, or everything retained), then follow live.
            last = try fetch(after: last)
            let msg = ZMQMultipart(maxFrames: 2)
            let deadline = duration > 0 ? Date().addingTimeInterval(duration) : .distantFuture
            while Date() < deadline {
                guard try sub.poll(timeout: 250).contains(.pollIn), try sub.receive(into: msg, dontWait: true), msg.count == 2 else { continue }
                guard let a = try? Wire.decode(AlertMessage.self, from: msg.bytes(1)) else { continue }
                if a.seq <= last { continue }             // already seen (re-sent firing alerts)
                if a.seq > last + 1 { last = try fetch(after: last) }   // gap: fill from the log
                if a.seq > last { try printAlert(a); last = a.seq }
            }
        }
    }
}

struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Publish rows of an .npy file as predictions, exactly as a producer would (schema first, sequence numbers, re-sent schema).")
    @Argument(help: "Saliency rows (.npy [rows, K]).") var file: String
    @Option(help: "Schema JSON.") var schema: String
    @Option(help: "Model name (default: the schema's).") var model: String?
    @Option(help: "Rows per second (0 = as fast as the socket takes them).") var rate: Double = 0
    @Option(help: "Publish only rows [from, to).") var from = 0
    @Option(help: "End row (exclusive; default: all).") var to: Int?
    @Option(name: .customLong("target"), help: "Loss target recorded in the header: predicted or true.") var target = "true"
    @Option(name: .customLong("producer-id"), help: "Producer id (default: random).") var producerID: UInt64?
    @Option(name: .customLong("wait-subscriber"), help: "Seconds to wait for the daemon's subscription before sending; none within it is an error (exit 1).") var waitSubscriber: Double = 10
    @Flag(name: .customLong("no-wait"), help: "Publish without waiting for a subscriber (rows sent before one connects are lost).") var noWait = false
    @Option(help: "Publish the selected rows this many times over (sequence numbers keep counting).") var `repeat` = 1
    @Option(help: "Send high-water mark: messages queued before the socket drops (0 = never drop; memory grows if the daemon is slower).") var hwm: Int32 = 0
    @OptionGroup var endpoints: EndpointOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        MessageMemory.keepFreedMemory()   // same allocator settings as saliencyd: a fair baseline
        var sch = try IO.readSchema(schema)
        if let m = model {
            do { sch = try ModelSchema(model: m, layers: sch.layers, quantity: sch.quantity) } catch { throw InputError(error.message) }
        }
        let x = try IO.readMatrix(file)
        guard x.columns == sch.filterCount else {
            throw InputError("'\(file)' has \(x.columns) columns but schema '\(sch.model)' has \(sch.filterCount) filters")
        }
        let end = min(to ?? x.rows, x.rows)
        guard from >= 0, from <= end else { throw InputError("--from \(from) is outside 0...\(end)") }
        let ctx = try ZMQContext()
        // XPUB: we see the daemon's subscription arrive, so no message is lost to the slow-joiner.
        let pub = try ctx.socket(.xpub, linger: 30_000)   // closing waits (≤ 30 s) until queued rows are sent
        try endpoints.secure(pub)
        try pub.setSendHighWaterMark(hwm)
        try pub.connect(endpoints.feed)
        let sub = ZMQMultipart(maxFrames: 1)
        let deadline = Date().addingTimeInterval(waitSubscriber)
        var subscribed = noWait
        while !subscribed && Date() < deadline {
            if try pub.poll(timeout: 100).contains(.pollIn), try pub.receive(into: sub, dontWait: true), sub.count == 1 {
                let f = sub.bytes(0)
                if f.first == 1 && Array(f.dropFirst()).starts(with: Array(Topic.predictionPrefix.utf8)) { subscribed = true; break }
            }
        }
        if !subscribed {
            let curve = endpoints.serverKey == nil ? "" : ", that --server-key is the daemon's public key and --client-key is in its allowed_clients_file"
            throw InputError("""
                no subscriber on \(endpoints.feed) within \(fmt(waitSubscriber, 4)) s: nothing was published. \
                Check that saliencyd is running (saliencyctl status --query …), that its feed endpoint ([feed] endpoint or --feed) \
                is \(endpoints.feed)\(curve); or pass --no-wait to publish regardless (e.g. to a proxy)
                """)
        }
        let schemaTopic = Topic.schema(sch.model), predTopic = Topic.prediction(sch.model), schemaBody = SchemaMessage.encode(sch)
        _ = try pub.send(schemaTopic, more: true)
        _ = try pub.send(schemaBody)
        var header = PredictionHeader(fingerprint: sch.fingerprint, producerID: producerID ?? UInt64.random(in: 1...UInt64.max),
                                      sequence: 0, timestampNanos: 0, predictedClass: -1, targetClass: -1,
                                      targetKind: target == "predicted" ? .predicted : .trueLabel)
        var hbuf = [UInt8](repeating: 0, count: PredictionHeader.size)
        let k = sch.filterCount
        let start = Date()
        var lastSchema = start
        var sent = 0
        var progress = ProgressLine("replay", total: max(1, `repeat`) * (end - from))
        for pass in 0..<max(1, `repeat`) { for r in from..<end {
            let seq = pass * (end - from) + (r - from)
            if rate > 0 {
                let due = start.addingTimeInterval(Double(seq) / rate)
                let wait = due.timeIntervalSinceNow
                if wait > 0 { Thread.sleep(forTimeInterval: wait) }
            }
            if Date().timeIntervalSince(lastSchema) > 10 {
                _ = try pub.send(schemaTopic, more: true)
                _ = try pub.send(schemaBody)
                lastSchema = Date()
            }
            header.sequence = UInt64(seq + 1)
            header.timestampNanos = Int64(Date().timeIntervalSince1970 * 1e9)
            hbuf.withUnsafeMutableBytes { header.encode(into: $0) }
            _ = try pub.send(predTopic, more: true)
            _ = try pub.send(hbuf, more: true)
            // Straight from the array (libzmq copies it once; no intermediate buffer).
            _ = try x.values.withUnsafeBytes { v in try pub.send(UnsafeRawBufferPointer(rebasing: v[(r * k * 4)..<((r + 1) * k * 4)])) }
            sent += 1
            progress.update(sent)
        } }
        progress.finish()
        let secs = Date().timeIntervalSince(start)
        let n = sent
        if output.json {
            try IO.printJSON(["published": Double(n), "seconds": secs, "rows_per_second": Double(n) / max(secs, 1e-9)])
        } else {
            print("published \(n) predictions of '\(sch.model)' (K = \(k)) in \(fmt(secs, 4)) s (\(fmt(Double(n) / max(secs, 1e-9), 5)) rows/s)")
        }
    }
}

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a CURVE key pair as ZeroMQ certificates: NAME (public, to share) and NAME_secret (mode 0600).",
        discussion: """
        The files are in the certificate format of czmq (zcert) and pyzmq (zmq.auth.load_certificate).
        saliencyd's server_secret_key_file and saliencyctl's --client-key take NAME or NAME_secret (NAME_secret is
        read when it exists); --server-key, allowed_clients_file and admin_clients_file take the public NAME.
        Key files of saliencyd 0.1 (`public = …` / `secret = …` lines) are still read everywhere.
        """)
    @Argument(help: "Name of the public certificate; the secret one is NAME_secret.") var file: String
    @Flag(help: "Overwrite existing files.") var force = false
    @OptionGroup var output: OutputOptions

    func run() throws {
        for f in [file, file + "_secret"] where !force && FileManager.default.fileExists(atPath: f) {
            throw InputError("'\(f)' exists; use --force to replace it")
        }
        let pair = try CurveKeyPair.generate()
        let secret = try pair.saveCertificates(to: file, createdBy: "saliencyctl \(SaliencyVersion.string)")
        if output.json {
            try IO.printJSON(["public_key": pair.publicKey, "public_file": file, "secret_file": secret])
        } else {
            print("public key: \(pair.publicKey)\npublic certificate \(file) (to share), secret certificate \(secret) (mode 0600, keep private)")
        }
    }
}


struct Sink: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Transport baseline: bind a SUB socket where saliencyd's feed would be, count messages, no processing.",
        discussion: "Run `saliencyctl replay` against it to measure the raw ZeroMQ rate for the same message size (BENCHMARKS.md).")
    @Option(help: "Endpoint to bind.") var feed = "tcp://127.0.0.1:5560"
    @Option(help: "Stop after this many prediction messages.") var count: Int
    @Option(help: "Give up after this many seconds.") var timeout: Double = 120
    @OptionGroup var output: OutputOptions

    func run() throws {
        MessageMemory.keepFreedMemory()   // same allocator settings as saliencyd: a fair baseline
        let ctx = try ZMQContext()
        let sub = try ctx.socket(.sub)
        try sub.setReceiveHighWaterMark(100_000)
        try sub.subscribe(Topic.predictionPrefix)
        try sub.subscribe(Topic.schemaPrefix)
        try sub.bind(feed)
        let m = ZMQMultipart(maxFrames: 4)
        var got = 0, bytes = 0
        var first: Date?
        let deadline = Date().addingTimeInterval(timeout)
        while got < count && Date() < deadline {
            guard try sub.poll(timeout: 100).contains(.pollIn) else { continue }
            while got < count, try sub.receive(into: m, dontWait: true) {
                guard m.count == 3 else { continue }
                if first == nil { first = Date() }
                got += 1
                bytes += m.frame(1).count + m.frame(2).count
            }
        }
        let secs = first.map { Date().timeIntervalSince($0) } ?? 0
        let r: [String: Double] = ["received": Double(got), "seconds": secs, "messages_per_second": Double(max(got - 1, 0)) / max(secs, 1e-9), "bytes_per_message": Double(bytes) / Double(max(got, 1))]
        if output.json { try IO.printJSON(r) } else { print("received \(got) messages in \(fmt(secs, 4)) s: \(fmt(r["messages_per_second"]!, 5)) msg/s") }
        if got < count { throw ExitCode.failure }
    }
}
