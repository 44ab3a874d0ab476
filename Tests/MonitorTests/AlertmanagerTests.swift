import Foundation
import Glibc
import Logging
import SaliencyCore
import SaliencyStream
import Synchronization
import Testing
@testable import SaliencyMonitor

/// A tiny HTTP/1.1 server on 127.0.0.1 for the forwarder: records each request (head and body)
/// and answers with `status` (or never answers, with `blackHole`).
final class TinyHTTPServer: @unchecked Sendable {
    struct Request: Sendable { var head: String; var body: [UInt8] }
    let fd: Int32
    let port: Int
    let requests = Mutex<[Request]>([])
    let status = Atomic<Int>(200)
    let blackHole: Bool
    private let stopped = Atomic<Bool>(false)

    init(blackHole: Bool = false) throws {
        self.blackHole = blackHole
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(4))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && listen(fd, 16) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { throw SaliencyError(.transport, "test server bind failed") }
        port = Int(UInt16(bigEndian: addr.sin_port))
        if !blackHole {
            let t = Thread { [self] in serve() }
            t.start()
        }
    }

    var url: String { "http://127.0.0.1:\(port)" }

    private func serve() {
        while !stopped.load(ordering: .relaxed) {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let c = accept(fd, nil, nil)
            guard c >= 0 else { continue }
            var buf: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            var request: Request?
            while request == nil {
                let n = chunk.withUnsafeMutableBytes { recv(c, $0.baseAddress!, $0.count, 0) }
                if n <= 0 { break }
                buf += chunk[0..<n]
                if let r = HTTPPost.parseRequest(buf) { request = r }
            }
            if let r = request {
                requests.withLock { $0.append(r) }
                let s = status.load(ordering: .relaxed)
                let body = s == 200 ? "" : "bad thing"
                let reply = Array("HTTP/1.1 \(s) X\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8)
                _ = reply.withUnsafeBytes { send(c, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
            }
            close(c)
        }
    }

    /// The alerts POSTed so far, decoded, in order.
    func alerts() -> [[String: Any]] {
        requests.withLock { $0 }.flatMap { r in (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [[String: Any]] ?? [] }
    }

    deinit {
        stopped.store(true, ordering: .relaxed)
        close(fd)
    }
}

extension HTTPPost {
    /// Test helper: a complete request (head and Content-Length body) from raw bytes.
    static func parseRequest(_ b: [UInt8]) -> TinyHTTPServer.Request? {
        let sep: [UInt8] = [13, 10, 13, 10]
        guard b.count >= 4, let end = (0...(b.count - 4)).first(where: { b[$0..<$0 + 4].elementsEqual(sep) }) else { return nil }
        let head = String(decoding: b[..<end], as: UTF8.self)
        var length = 0
        for l in head.split(separator: "\r\n") {
            let kv = l.split(separator: ":", maxSplits: 1)
            if kv.count == 2, kv[0].lowercased() == "content-length" { length = Int(kv[1].trimmingCharacters(in: .whitespaces)) ?? 0 }
        }
        guard b.count - end - 4 >= length else { return nil }
        return .init(head: head, body: Array(b[(end + 4)..<(end + 4 + length)]))
    }
}

func filterAlert(model: String = "demo", filter: Int = 2, status: AlertMessage.Status = .firing, seq: UInt64 = 1) -> AlertMessage {
    var a = AlertMessage(seq: seq, status: status,
                         labels: ["alertname": "SalientFilter", "model": model, "layer": "conv1", "filter": "\(filter)", "channel": "\(filter)", "severity": "warning"],
                         annotations: ["summary": "s \(filter)"], startsAt: "2026-12-02T08:25:06.471Z", model: model, filter: filter, layer: "conv1",
                         channel: filter, score: 1, p: 0.1, threshold: 1, extreme_threshold: 2, exceedances: 3, window: 61, value: 4)
    if status == .resolved { a.endsAt = "2026-12-02T08:26:00.000Z" }
    return a
}

@Suite struct AlertmanagerTests {
    /// Values Alertmanager 0.25 (Debian prometheus-alertmanager) reported in `GET /api/v2/alerts`
    /// for alerts POSTed with these labels (see Tests/Python/test_alertmanager.py, which checks
    /// the daemon's fingerprints against a live Alertmanager on every run).
    @Test func fingerprintIsAlertmanagers() {
        #expect(AlertMessage.fingerprint(of: [:]) == "cbf29ce484222325")
        #expect(AlertMessage.fingerprint(of: ["alertname": "SalientFilter", "channel": "2", "filter": "2", "layer": "conv1", "model": "demo", "severity": "warning"])
            == AlertmanagerTests.amFilterFingerprint)
        #expect(AlertMessage.fingerprint(of: ["alertname": "ModelShift", "layer": "_model", "model": "demo", "severity": "critical"])
            == AlertmanagerTests.amModelFingerprint)
        #expect(AlertMessage.fingerprint(of: ["alertname": "SalientFilter", "channel": "2", "direction": "upper", "filter": "2", "layer": "conv1", "model": "demo", "severity": "warning"])
            == AlertmanagerTests.amDirectedFilterFingerprint)
        // Independent of dictionary order; bytewise name order ("Z" < "a").
        #expect(AlertMessage.fingerprint(of: ["a": "1", "Z": "2"]) == "d41ed4e05c2ada79")
    }
    /// The golden wire fixtures (Tests/StreamTests/Fixtures/wire) carry Alertmanager's fingerprints.
    @Test func fixturesCarryAlertmanagerFingerprints() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().path + "/StreamTests/Fixtures/wire/"
        let one = try Wire.decode(AlertMessage.self, from: [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "alert.json"))))
        let reply = try JSONSerialization.jsonObject(with: try Data(contentsOf: URL(fileURLWithPath: dir + "reply-alerts.json"))) as! [String: Any]
        var all = [one]
        for a in reply["alerts"] as! [[String: Any]] {
            all.append(try Wire.decode(AlertMessage.self, from: [UInt8](try JSONSerialization.data(withJSONObject: a))))
        }
        #expect(all.count >= 3)
        for a in all { #expect(a.fingerprint == AlertMessage.fingerprint(of: a.labels), "\(a.labels)") }
        #expect(one.fingerprint == Self.amDirectedFilterFingerprint)
    }

    static let amFilterFingerprint = "07cf4afa536e4162"
    static let amModelFingerprint = "556ef650caf35192"
    /// The fixture alert's labels since alerts carry `direction` (two tails): reported by a live
    /// Alertmanager 0.25 for {alertname=SalientFilter, channel=2, direction=upper, filter=2,
    /// layer=conv1, model=demo, severity=warning}.
    static let amDirectedFilterFingerprint = "9caa41aa24db608f"

    @Test func postableEncoding() throws {
        let firing = filterAlert(model: "my model/ü")
        let json = String(decoding: PostableAlert.json(firing, base: "http://h:9464"), as: UTF8.self)
        #expect(json == #"{"annotations":{"summary":"s 2"},"generatorURL":"http://h:9464/filter/my%20model%2F%C3%BC/2","labels":{"alertname":"SalientFilter","channel":"2","filter":"2","layer":"conv1","model":"my model/ü","severity":"warning"},"startsAt":"2026-12-02T08:25:06.471Z"}"#)
        let resolved = filterAlert(status: .resolved)
        let r = String(decoding: PostableAlert.json(resolved, base: ""), as: UTF8.self)
        #expect(r == #"{"annotations":{"summary":"s 2"},"endsAt":"2026-12-02T08:26:00.000Z","labels":{"alertname":"SalientFilter","channel":"2","filter":"2","layer":"conv1","model":"demo","severity":"warning"},"startsAt":"2026-12-02T08:25:06.471Z"}"#)
        #expect(PostableAlert.generatorURL(base: "http://x", model: "m-1.a_b~", filter: nil) == "http://x/model/m-1.a_b~")
        let arr = PostableAlert.array([Array("{}".utf8), Array("{\"a\":1}".utf8)])
        #expect(String(decoding: arr, as: UTF8.self) == "[{},{\"a\":1}]")
        #expect(String(decoding: PostableAlert.array([]), as: UTF8.self) == "[]")
    }

    @Test func endpointParsing() throws {
        let e = try HTTPEndpoint(parsing: "http://10.0.0.5:9093/am/")
        #expect(e.host == "10.0.0.5" && e.port == 9093 && e.path == "/am")
        let d = try HTTPEndpoint(parsing: "http://alertmanager")
        #expect(d.port == 80 && d.path == "")
        let v6 = try HTTPEndpoint(parsing: "http://[::1]:9093")
        #expect(v6.host == "::1" && v6.port == 9093)
        for bad in ["https://am:9093", "am:9093", "http://:9093", "http://am:0", "http://am:99999", "http://u:p@am:9093", "http://am:9093/?x", "http://am:9093?x", "http://am#f", "http://a m:1", "ftp://am"] {
            #expect(throws: SaliencyError.self, "\(bad)") { try HTTPEndpoint(parsing: bad) }
        }
        do { _ = try HTTPEndpoint(parsing: "https://am:9093"); Issue.record("https accepted") } catch {
            #expect(error.message.contains("https"))
        }
    }

    @Test func configuration() throws {
        let c = try DaemonConfiguration.parse(toml: """
        [alertmanager]
        urls = ["http://127.0.0.1:9093", "http://127.0.0.1:9094"]
        timeout = 2
        resend_interval = 30
        queue_capacity = 500
        batch_size = 10
        max_backoff = 5.5
        external_url = "http://saliencyd.example:9464/"
        """)
        try c.validate()
        #expect(c.alertmanager.urls.count == 2 && c.alertmanager.timeout == 2 && c.alertmanager.resendInterval == 30)
        #expect(c.alertmanager.queueCapacity == 500 && c.alertmanager.batchSize == 10 && c.alertmanager.maxBackoff == 5.5)
        #expect(c.alertmanagerExternalURL == "http://saliencyd.example:9464")
        #expect(c.effectiveSummary.contains("[alertmanager] urls = [\"http://127.0.0.1:9093\", \"http://127.0.0.1:9094\"]"))
        #expect(DaemonConfiguration().alertmanager.urls.isEmpty)
        #expect(DaemonConfiguration().alertmanagerExternalURL == "http://127.0.0.1:9464")
        #expect(c.restartRequired(comparedTo: DaemonConfiguration()).isEmpty, "[alertmanager] is applied by a reload")
        func refused(_ toml: String, _ needle: String) {
            do {
                try DaemonConfiguration.parse(toml: toml).validate()
                Issue.record("accepted: \(toml)")
            } catch { #expect(error.message.contains(needle), "\(error.message)") }
        }
        refused("[alertmanager]\nurls = [\"https://am:9093\"]", "https")
        refused("[alertmanager]\nurls = \"http://am:9093\"", "alertmanager.urls must be an array of strings")
        refused("[alertmanager]\nurls = [1]", "alertmanager.urls must be an array of strings")
        refused("[alertmanager]\nurls = [\"http://am:9093\"]\nresend_interval = 300", "resend_interval")
        refused("[alertmanager]\nresend_interval = nan", "resend_interval")
        refused("[alertmanager]\ntimeout = 0", "alertmanager.timeout")
        refused("[alertmanager]\nqueue_capacity = 1", "queue_capacity")
        refused("[alertmanager]\nbatch_size = 0", "batch_size")
        refused("[alertmanager]\nmax_backoff = inf", "max_backoff")
        refused("[alertmanager]\nexternal_url = \"saliencyd:9464\"", "external_url")
        refused("[alertmanager]\nurl = []", "did you mean 'urls'")
        let slow = try DaemonConfiguration.parse(toml: "[alertmanager]\nurls = [\"http://am:9093\"]\nresend_interval = 200")
        try slow.validate()
        #expect(slow.warnings.contains { $0.contains("resend_interval") })
    }

    @Test func resendSetAndPending() {
        var s = AlertmanagerDeliveryState(endpoints: [try! HTTPEndpoint(parsing: "http://a:1"), try! HTTPEndpoint(parsing: "http://b:1")], base: "http://x", capacity: 3)
        let a2 = filterAlert(filter: 2, seq: 1), a3 = filterAlert(filter: 3, seq: 2)
        s.apply(a2); s.apply(a3)
        #expect(s.firing.count == 2)
        #expect(s.targets.allSatisfy { $0.pending.count == 2 })
        #expect(s.batch(0, limit: 1).map(\.0) == [a2.fingerprint])
        s.delivered(0, [a2.fingerprint, a3.fingerprint])
        #expect(s.targets[0].pending.isEmpty && s.targets[1].pending.count == 2)
        // Resolved: leaves the set, replaces the firing version still waiting for target 1.
        s.apply(filterAlert(filter: 2, status: .resolved, seq: 3))
        #expect(s.firing.keys.sorted() == [a3.fingerprint])
        let waiting = String(decoding: s.targets[1].pending[a2.fingerprint]!, as: UTF8.self)
        #expect(waiting.contains("\"endsAt\":\"2026-12-02T08:26:00.000Z\""))
        #expect(s.targets[0].pending.count == 1)
        s.delivered(0, [a2.fingerprint]); s.delivered(1, [a2.fingerprint, a3.fingerprint])
        // Sync: every firing alert is queued again (the re-send); one that vanished (model reset)
        // goes out resolved with endsAt = now.
        let a4 = filterAlert(filter: 4, seq: 4)
        let vanished = s.sync([a4], now: "2026-12-02T09:00:00.000Z")
        #expect(vanished == 1)
        #expect(s.firing.keys.sorted() == [a4.fingerprint])
        for t in s.targets {
            #expect(Set(t.pending.keys) == [a3.fingerprint, a4.fingerprint])
            #expect(String(decoding: t.pending[a3.fingerprint]!, as: UTF8.self).contains("\"endsAt\":\"2026-12-02T09:00:00.000Z\""))
            #expect(!String(decoding: t.pending[a4.fingerprint]!, as: UTF8.self).contains("endsAt"))
        }
        // A second sync with the same list re-queues, never duplicates.
        s.sync([a4], now: "x")
        #expect(s.targets[0].pending.count == 2 && s.targets[0].order.count == 2)
        // Bounded: more distinct alerts than capacity are counted, not kept.
        for f in 10..<15 { s.apply(filterAlert(filter: f, seq: UInt64(f))) }
        #expect(s.targets.allSatisfy { $0.pending.count == 3 })
        #expect(s.overflow == 2 * 4)
    }

    func forwarder(_ urls: [String], resend: Double = 60, capacity: Int = 100, timeout: Double = 2, maxBackoff: Double = 0.2) throws -> (AlertmanagerForwarder, DeliveryStats) {
        var c = DaemonConfiguration()
        c.alertmanager.urls = urls
        c.alertmanager.resendInterval = resend
        c.alertmanager.queueCapacity = capacity
        c.alertmanager.timeout = timeout
        c.alertmanager.maxBackoff = maxBackoff
        c.alertmanager.externalURL = "http://daemon:9464"
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let stats = DeliveryStats()
        return (try AlertmanagerForwarder(configuration: c, stats: stats, logger: logger), stats)
    }

    func waitUntil(_ seconds: Double = 10, _ cond: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end { if cond() { return true }; usleep(20_000) }
        return cond()
    }

    /// Firing then resolved alerts reach a real HTTP listener as Alertmanager's v2 request.
    @Test func deliversFiringAndResolved() throws {
        let server = try TinyHTTPServer()
        let (f, stats) = try forwarder([server.url + "/prefix/"])
        f.start()
        defer { f.stop(deadline: .seconds(1)) }
        #expect(f.submit(filterAlert(filter: 2, seq: 1)))
        #expect(waitUntil { server.alerts().count == 1 })
        #expect(f.submit(filterAlert(filter: 2, status: .resolved, seq: 2)))
        #expect(waitUntil { server.alerts().count == 2 })
        let reqs = server.requests.withLock { $0 }
        #expect(reqs[0].head.hasPrefix("POST /prefix/api/v2/alerts HTTP/1.1\r\n"))
        #expect(reqs[0].head.contains("Content-Type: application/json"))
        #expect(reqs[0].head.contains("Host: 127.0.0.1:\(server.port)"))
        let alerts = server.alerts()
        #expect(alerts[0]["endsAt"] == nil)
        #expect(alerts[0]["generatorURL"] as? String == "http://daemon:9464/filter/demo/2")
        #expect((alerts[0]["labels"] as? [String: String])?["alertname"] == "SalientFilter")
        #expect(alerts[1]["endsAt"] as? String == "2026-12-02T08:26:00.000Z")
        #expect(waitUntil { stats.snapshot().targets[0].sent == 2 })
        let s = stats.snapshot()
        #expect(s.enabled && s.targets[0].up && s.targets[0].lastSuccessUnix > 0 && s.firing == 0)
    }

    /// A sync re-sends the firing set; a failing target is retried with back-off and gets
    /// everything still firing once it answers.
    @Test func resendAndRetry() throws {
        let server = try TinyHTTPServer()
        server.status.store(503, ordering: .relaxed)
        let (f, stats) = try forwarder([server.url])
        f.start()
        defer { f.stop(deadline: .seconds(1)) }
        let a = filterAlert(filter: 5, seq: 1)
        #expect(f.submit(a))
        #expect(waitUntil { stats.snapshot().targets[0].failedRequests >= 3 })
        #expect(!stats.snapshot().targets[0].up)
        #expect(stats.snapshot().firing == 1)
        server.status.store(200, ordering: .relaxed)
        #expect(waitUntil { stats.snapshot().targets[0].sent == 1 })
        #expect(stats.snapshot().targets[0].up)
        let before = server.requests.withLock { $0.count }
        f.sync([a])
        #expect(waitUntil { server.requests.withLock { $0.count } == before + 1 })
        #expect((server.alerts().last?["labels"] as? [String: String])?["filter"] == "5")
        // 4xx: refused alerts are not retried forever.
        server.status.store(400, ordering: .relaxed)
        f.sync([a])
        #expect(waitUntil { stats.snapshot().targets[0].failed >= 4 })
        let n = server.requests.withLock { $0.count }
        usleep(600_000)
        #expect(server.requests.withLock { $0.count } == n)
    }

    /// A listener that never answers: each POST ends at `timeout`, is counted, and submit stays O(1).
    @Test func blackHoleAndQueueOverflow() throws {
        let hole = try TinyHTTPServer(blackHole: true)
        let (f, stats) = try forwarder([hole.url], capacity: 10, timeout: 0.3, maxBackoff: 0.3)
        f.start()
        defer { f.stop(deadline: .milliseconds(200)) }
        let clock = ContinuousClock()
        var accepted = 0
        let took = clock.measure {
            for i in 0..<5000 where f.submit(filterAlert(filter: i, seq: UInt64(i))) { accepted += 1 }
        }
        #expect(took < .milliseconds(500), "submit blocked: \(took)")
        #expect(accepted < 5000)
        #expect(waitUntil { stats.snapshot().dropped > 0 && stats.snapshot().targets[0].failedRequests >= 2 })
        #expect(stats.snapshot().targets[0].sent == 0)
    }
}
