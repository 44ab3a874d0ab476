#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Logging
import SaliencyCore
import SaliencyStream
import Synchronization

// Native delivery of alerts to Prometheus Alertmanager (docs/operations.md "Alertmanager").
//
// The engine thread hands alerts over with `submit` (a bounded queue: O(1), never waits on I/O;
// full = counted drop) and, every `alertmanager.resend_interval`, the complete list of firing
// alerts with `sync`. The forwarder's own thread keeps the set of firing alerts by fingerprint,
// turns each alert into Alertmanager's postable shape, and POSTs JSON arrays to every configured
// Alertmanager's `/api/v2/alerts` over plain HTTP/1.1 on POSIX sockets with a deadline per request.
//
// Why not URLSession: FoundationNetworking on Linux pulls in libcurl and runs its own threads and
// run loop; a request's timeout covers only idle time, not the whole exchange, and its body is
// read without a size cap. A POST of a few KiB with `Connection: close` is 200 lines here, with a
// hard deadline and a capped read, and no new dependency.
//
// Memory is bounded by design: the queue holds at most `queue_capacity` alerts; what waits for
// one Alertmanager is keyed by fingerprint (one entry per label set, the latest state wins), so
// an Alertmanager that is down for hours costs at most one entry per distinct alert, capped at
// `queue_capacity`. When it returns, every alert still firing reaches it: the firing set is
// re-queued for every target at each sync.

/// A parsed `http://host[:port][/prefix]` base URL (`alertmanager.urls`).
public struct HTTPEndpoint: Sendable, Hashable {
    public var url: String
    public var host: String
    public var port: Int
    /// Path prefix without a trailing slash ("" or "/alertmanager").
    public var path: String

    public init(parsing raw: String) throws(SaliencyError) {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.invalidConfiguration, "\"\(raw)\" \(m)") }
        guard raw.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { throw bad("contains spaces or non-ASCII characters; give a base URL like http://127.0.0.1:9093") }
        let lower = raw.lowercased()
        if lower.hasPrefix("https://") {
            throw bad("uses https, which saliencyd does not speak: it POSTs plain HTTP/1.1. Use http:// on a trusted network, or a local TLS-terminating proxy (e.g. stunnel or nginx on loopback) that forwards to the Alertmanager")
        }
        guard lower.hasPrefix("http://") else { throw bad("is not an http:// URL; give the Alertmanager's base URL, e.g. http://127.0.0.1:9093") }
        guard !raw.contains("?"), !raw.contains("#") else { throw bad("has a query or fragment; give only scheme, host, port and an optional path prefix") }
        var rest = Substring(raw.dropFirst(7))
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        var path = String(rest[slash...])
        rest = authority
        guard !authority.contains("@") else { throw bad("carries credentials (user@host); they are not supported") }
        while path.hasSuffix("/") { path.removeLast() }
        var host: Substring, portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw bad("has an unterminated IPv6 address") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw bad("has junk after the IPv6 address") }
                portText = after.dropFirst()
            }
        } else if let c = authority.lastIndex(of: ":") {
            host = authority[..<c]
            portText = authority[authority.index(after: c)...]
        } else {
            host = authority
        }
        guard !host.isEmpty else { throw bad("has no host") }
        var port = 80
        if let p = portText {
            guard let v = Int(p), (1...65535).contains(v) else { throw bad("has an invalid port '\(p)'") }
            port = v
        }
        self.url = raw
        self.host = String(host)
        self.port = port
        self.path = path
    }
}

/// One HTTP/1.1 POST over a POSIX socket, bounded by a deadline for the whole exchange.
enum HTTPPost {
    struct Response { var status: Int; var body: [UInt8] }
    struct Failure: Error, CustomStringConvertible { var description: String }

    /// Largest response read (Alertmanager answers a POST with a few bytes; errors with a line).
    static let maxResponseBytes = 64 << 10

    static func post(_ ep: HTTPEndpoint, path: String, body: [UInt8], timeout: Double,
                     maxResponseBytes: Int = HTTPPost.maxResponseBytes) throws(Failure) -> Response {
        let deadline = ContinuousClock.now + .milliseconds(Int64(timeout * 1000))
        let fd = try connect(ep, deadline: deadline)
        defer { close(fd) }
        let hostHeader = ep.host.contains(":") ? "[\(ep.host)]:\(ep.port)" : "\(ep.host):\(ep.port)"
        var request = Array("POST \(ep.path)\(path) HTTP/1.1\r\nHost: \(hostHeader)\r\nUser-Agent: saliencyd\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8)
        request.append(contentsOf: body)
        var sent = 0
        while sent < request.count {
            try wait(fd, Int16(POLLOUT), deadline, "sending the request")
            let n = request.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                throw Failure(description: "send failed: \(String(cString: strerror(errno)))")
            }
            sent += n
        }
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 8192)
        while reply.count < maxResponseBytes {
            if let r = parse(reply, complete: false) { return r }
            try wait(fd, Int16(POLLIN), deadline, "waiting for the response")
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, min($0.count, maxResponseBytes - reply.count), 0) }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                throw Failure(description: "receive failed: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            reply.append(contentsOf: chunk[0..<n])
        }
        guard let r = parse(reply, complete: true) else {
            throw Failure(description: reply.isEmpty ? "connection closed without a response" : "malformed HTTP response (\(reply.count) bytes)")
        }
        return r
    }

    /// The response once its status line and headers are in and, if `Content-Length` is given,
    /// its body; with `complete` (EOF or size cap) whatever body arrived.
    static func parse(_ b: [UInt8], complete: Bool) -> Response? {
        let sep: [UInt8] = [13, 10, 13, 10]
        guard b.count >= 12, let end = (0...(b.count - 4)).first(where: { b[$0..<$0 + 4].elementsEqual(sep) }) else { return nil }
        let head = String(decoding: b[..<end], as: UTF8.self)
        let lines = head.split(separator: "\r\n", omittingEmptySubsequences: false)
        let parts = lines.first?.split(separator: " ") ?? []
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]), (100...599).contains(status) else {
            return complete ? Response(status: 0, body: Array(b.prefix(200))) : nil
        }
        let body = Array(b[(end + 4)...])
        var length: Int?
        for l in lines.dropFirst() {
            let kv = l.split(separator: ":", maxSplits: 1)
            if kv.count == 2, kv[0].lowercased() == "content-length" { length = Int(kv[1].trimmingCharacters(in: .whitespaces)) }
        }
        if let n = length {
            if body.count >= n { return Response(status: status, body: Array(body.prefix(n))) }
            return complete ? Response(status: status, body: body) : nil
        }
        return complete ? Response(status: status, body: body) : nil
    }

    static func wait(_ fd: Int32, _ events: Int16, _ deadline: ContinuousClock.Instant, _ what: String) throws(Failure) {
        while true {
            let left = deadline - ContinuousClock.now
            let ms = left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000
            guard ms > 0 else { throw Failure(description: "timed out \(what)") }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let r = poll(&p, 1, Int32(clamping: ms))
            if r < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "poll failed: \(String(cString: strerror(errno)))")
            }
            if r > 0 { return }
        }
    }

    static func connect(_ ep: HTTPEndpoint, deadline: ContinuousClock.Instant) throws(Failure) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        // Name resolution has no timeout of its own (getaddrinfo); it runs on the forwarder's
        // thread only. Use an IP address in alertmanager.urls to avoid DNS.
        let rc = getaddrinfo(ep.host, String(ep.port), &hints, &list)
        guard rc == 0, let first = list else { throw Failure(description: "cannot resolve \(ep.host): \(String(cString: gai_strerror(rc)))") }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype, a.pointee.ai_protocol)
            if fd < 0 { lastError = String(cString: strerror(errno)); continue }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return fd }
            guard errno == EINPROGRESS else { lastError = String(cString: strerror(errno)); close(fd); continue }
            do { try wait(fd, Int16(POLLOUT), deadline, "connecting") } catch { close(fd); throw error }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err == 0 { return fd }
            lastError = String(cString: strerror(err))
            close(fd)
        }
        throw Failure(description: "cannot connect to \(ep.host):\(ep.port): \(lastError)")
    }
}

/// Alerts in Alertmanager's postable form (`POST /api/v2/alerts` takes a JSON array of these).
enum PostableAlert {
    /// `generatorURL` of an alert: the daemon's page for the filter or for the model.
    static func generatorURL(base: String, model: String, filter: Int?) -> String {
        guard !base.isEmpty else { return "" }
        if let f = filter { return "\(base)/filter/\(percentEncode(model))/\(f)" }
        return "\(base)/model/\(percentEncode(model))"
    }

    /// RFC 3986 percent-encoding of one path segment: unreserved characters kept, every other byte %XX.
    static func percentEncode(_ s: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.append(b)
            default:
                out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// One alert as a JSON object: labels, annotations, startsAt, endsAt (resolved alerts only:
    /// a firing alert without endsAt stays active for Alertmanager's resolve_timeout), generatorURL.
    static func json(_ a: AlertMessage, base: String, endsAt: String? = nil) -> [UInt8] {
        var o = JSONWriter()
        o.open()
        o.key("annotations"); o.object(a.annotations)
        if let e = endsAt ?? (a.status == .resolved ? a.endsAt : nil) { o.key("endsAt"); o.string(e) }
        let g = generatorURL(base: base, model: a.model, filter: a.filter)
        if !g.isEmpty { o.key("generatorURL"); o.string(g) }
        o.key("labels"); o.object(a.labels)
        o.key("startsAt"); o.string(a.startsAt)
        o.close()
        return o.bytes
    }

    /// A JSON array of encoded alerts (the POST body).
    static func array(_ items: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "[")]
        for (i, b) in items.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out += b
        }
        out.append(UInt8(ascii: "]"))
        return out
    }
}

/// The firing set and what waits for each Alertmanager; no I/O, no threads (unit-tested directly).
struct AlertmanagerDeliveryState {
    struct Entry { var alert: AlertMessage; var json: [UInt8] }
    struct Target {
        let endpoint: HTTPEndpoint
        /// Alerts waiting for this target, by fingerprint (latest state wins), in arrival order.
        var pending: [String: [UInt8]] = [:]
        var order: [String] = []
        var failures = 0
        var nextAttempt = ContinuousClock.now
        var up = true
        var everSucceeded = false
        var lastDownLog: ContinuousClock.Instant?
    }

    let base: String
    let capacity: Int
    var firing: [String: Entry] = [:]
    var targets: [Target]
    /// Entries a target could not hold (more than `capacity` distinct alerts waiting).
    var overflow: UInt64 = 0

    init(endpoints: [HTTPEndpoint], base: String, capacity: Int) {
        self.base = base
        self.capacity = capacity
        targets = endpoints.map { Target(endpoint: $0) }
    }

    mutating func enqueue(_ fp: String, _ json: [UInt8]) {
        for i in targets.indices {
            if targets[i].pending.updateValue(json, forKey: fp) == nil {
                if targets[i].pending.count > capacity {
                    targets[i].pending[fp] = nil
                    overflow &+= 1
                } else {
                    targets[i].order.append(fp)
                }
            }
        }
    }

    /// A published alert: a firing one joins the set, a resolved one leaves it; both go to every target.
    mutating func apply(_ a: AlertMessage) {
        let json = PostableAlert.json(a, base: base)
        if a.status == .firing { firing[a.fingerprint] = Entry(alert: a, json: json) } else { firing[a.fingerprint] = nil }
        enqueue(a.fingerprint, json)
    }

    /// The engine's complete list of firing alerts: the set becomes exactly that list, every
    /// firing alert is queued again for every target (the re-send), and an alert that left the
    /// engine without a resolved message (model reset or expired, or its resolve dropped in a
    /// full queue) is sent resolved with `endsAt = now`. Returns how many were resolved so.
    @discardableResult
    mutating func sync(_ list: [AlertMessage], now: String) -> Int {
        var next: [String: Entry] = [:]
        for a in list {
            if let e = firing[a.fingerprint], e.alert.seq == a.seq, e.alert.startsAt == a.startsAt { next[a.fingerprint] = e } else {
                next[a.fingerprint] = Entry(alert: a, json: PostableAlert.json(a, base: base))
            }
        }
        var vanished = 0
        for (fp, e) in firing where next[fp] == nil {
            enqueue(fp, PostableAlert.json(e.alert, base: base, endsAt: now))
            vanished += 1
        }
        firing = next
        for (fp, e) in next.sorted(by: { $0.value.alert.seq < $1.value.alert.seq }) { enqueue(fp, e.json) }
        return vanished
    }

    /// Up to `limit` waiting alerts of target `i`, oldest first (fingerprints and bodies).
    func batch(_ i: Int, limit: Int) -> [(String, [UInt8])] {
        var out: [(String, [UInt8])] = []
        for fp in targets[i].order {
            guard let j = targets[i].pending[fp] else { continue }
            out.append((fp, j))
            if out.count == limit { break }
        }
        return out
    }

    /// Removes delivered (or undeliverable) alerts from target `i`.
    mutating func delivered(_ i: Int, _ fps: [String]) {
        for fp in fps { targets[i].pending[fp] = nil }
        let keep = targets[i].pending
        targets[i].order.removeAll { keep[$0] == nil }
        // Duplicates cannot arise (a key is appended only when new), but stale ones can; compact.
    }
}

/// The forwarder: a bounded hand-over queue and its own delivery thread.
public final class AlertmanagerForwarder: @unchecked Sendable {
    // `@unchecked Sendable`: `mailbox` is guarded by `condition`; `state` and the logging
    // throttles are touched only by the forwarder's thread.
    enum Item { case alert(AlertMessage), sync([AlertMessage]) }
    struct Mailbox { var items: [Item] = []; var alerts = 0; var stop = false; var stopDeadline = ContinuousClock.now }

    let configuration: DaemonConfiguration.Alertmanager
    let stats: DeliveryStats
    let logger: Logger
    private let condition = NSCondition()
    private var mailbox = Mailbox()
    private var state: AlertmanagerDeliveryState
    private let finished = DispatchSemaphore(value: 0)
    /// Set when a reload replaced this forwarder: its thread finishes its flush but no longer
    /// writes `stats`, which belong to the new one.
    private let detached = Atomic<Bool>(false)
    private var started = false
    private var stopWait: Duration = .seconds(0)
    /// Base delay of the first retry, in seconds (doubles per failure up to max_backoff).
    static let baseBackoff = 0.5

    public init(configuration c: DaemonConfiguration, stats: DeliveryStats, logger: Logger) throws(SaliencyError) {
        configuration = c.alertmanager
        self.stats = stats
        self.logger = logger
        var eps: [HTTPEndpoint] = []
        for u in c.alertmanager.urls { eps.append(try HTTPEndpoint(parsing: u)) }
        state = AlertmanagerDeliveryState(endpoints: eps, base: c.alertmanagerExternalURL, capacity: c.alertmanager.queueCapacity)
        stats.update { s in
            // A reload keeps the counts of the URLs that stay (counters stay monotonic).
            let old = Dictionary(s.targets.map { ($0.url, $0) }, uniquingKeysWith: { a, _ in a })
            s.enabled = true
            s.capacity = c.alertmanager.queueCapacity
            s.targets = eps.map { old[$0.url] ?? DeliveryStats.Target(url: $0.url) }
        }
    }

    /// Hands a published alert over (engine thread). Never waits on I/O; false if the queue is
    /// full and the alert was dropped (counted; a firing one is re-sent at the next sync).
    public func submit(_ a: AlertMessage) -> Bool {
        condition.lock()
        guard mailbox.alerts < configuration.queueCapacity else {
            condition.unlock()
            stats.update { $0.dropped &+= 1 }
            return false
        }
        mailbox.items.append(.alert(a))
        mailbox.alerts += 1
        condition.signal()
        condition.unlock()
        return true
    }

    /// Hands over the complete list of firing alerts (engine thread, every resend_interval). An
    /// older sync still waiting is superseded (the newer list covers it), so this never grows.
    public func sync(_ firing: [AlertMessage]) {
        condition.lock()
        mailbox.items.removeAll { if case .sync = $0 { true } else { false } }
        mailbox.items.append(.sync(firing))
        condition.signal()
        condition.unlock()
    }

    /// Stops writing `stats` (checked under the stats lock, so no write lands after this returns).
    public func detach() {
        stats.update { _ in detached.store(true, ordering: .releasing) }
    }

    private func updateStats(_ body: (inout DeliveryStats.Snapshot) -> Void) {
        stats.update { s in
            guard !detached.load(ordering: .acquiring) else { return }
            body(&s)
        }
    }

    public func start() {
        started = true
        logger.notice("alert delivery to \(state.targets.count) Alertmanager\(state.targets.count == 1 ? "" : "s")", metadata: [
            "urls": "\(configuration.urls.joined(separator: ","))", "resend_interval": "\(configuration.resendInterval)",
            "generator_url_base": "\(state.base.isEmpty ? "(none)" : state.base)",
        ])
        let t = Thread { [self] in
            run()
            finished.signal()
        }
        t.name = "alertmanager"
        t.start()
    }

    /// Asks the thread to flush what is queued (bounded by `deadline`) and stop; returns at once.
    public func requestStop(deadline: Duration) {
        condition.lock()
        if !mailbox.stop {
            mailbox.stop = true
            mailbox.stopDeadline = .now + deadline
            stopWait = deadline
        }
        condition.signal()
        condition.unlock()
    }

    /// Waits for the thread to end (at most its flush deadline plus 0.5 s).
    public func waitStopped() {
        guard started else { return }
        started = false
        if finished.wait(timeout: .now() + .milliseconds(Int(stopWait.components.seconds * 1000) + 500)) == .timedOut {
            logger.warning("alert delivery did not finish within its shutdown deadline; alerts still firing reach Alertmanager when the daemon re-sends them after restart")
        }
    }

    /// Stops the thread after a final flush of what is queued, bounded by `deadline`.
    public func stop(deadline: Duration) {
        requestStop(deadline: deadline)
        waitStopped()
    }

    private func run() {
        var lastStats = ContinuousClock.now - .seconds(10)
        while true {
            condition.lock()
            let wake = nextWake()
            while mailbox.items.isEmpty, !mailbox.stop, ContinuousClock.now < wake {
                let left = wake - ContinuousClock.now
                _ = condition.wait(until: Date(timeIntervalSinceNow: Double(left.components.seconds) + Double(left.components.attoseconds) * 1e-18))
            }
            let items = mailbox.items
            mailbox.items.removeAll(keepingCapacity: true)
            mailbox.alerts = 0
            let stop = mailbox.stop, stopDeadline = mailbox.stopDeadline
            condition.unlock()

            for item in items {
                switch item {
                case .alert(let a): state.apply(a)
                case .sync(let list):
                    let n = state.sync(list, now: AlertMessage.now())
                    if n > 0 { logger.info("alerts that left the engine without a resolve (model reset or expired) sent as resolved", metadata: ["count": "\(n)"]) }
                }
            }
            if stop {
                finalFlush(deadline: stopDeadline)
                publishStats()
                return
            }
            for i in state.targets.indices { sendDue(i, deadline: nil) }
            if !items.isEmpty || ContinuousClock.now - lastStats >= .seconds(1) {
                publishStats()
                lastStats = .now
            }
        }
    }

    /// When the loop must wake without new input: the earliest retry of a target with work, at most 1 s away.
    private func nextWake() -> ContinuousClock.Instant {
        var t = ContinuousClock.now + .seconds(1)
        for target in state.targets where !target.pending.isEmpty { t = min(t, target.nextAttempt) }
        return t
    }

    private func finalFlush(deadline: ContinuousClock.Instant) {
        for i in state.targets.indices where state.targets[i].up && !state.targets[i].pending.isEmpty {
            sendDue(i, deadline: deadline)
        }
        let left = state.targets.reduce(0) { $0 + $1.pending.count }
        logger.notice("alert delivery stopped", metadata: ["undelivered": "\(left)", "firing": "\(state.firing.count)"])
    }

    /// Sends what target `i` has waiting, batch by batch, unless it is backing off. With a
    /// `deadline` (shutdown) each request's timeout is cut to what is left.
    private func sendDue(_ i: Int, deadline: ContinuousClock.Instant?) {
        while !state.targets[i].pending.isEmpty {
            let now = ContinuousClock.now
            if deadline == nil, now < state.targets[i].nextAttempt { return }
            var timeout = configuration.timeout
            if let d = deadline {
                let left = d - now
                let s = Double(left.components.seconds) + Double(left.components.attoseconds) * 1e-18
                guard s > 0.05 else { return }
                timeout = min(timeout, s)
            }
            let batch = state.batch(i, limit: configuration.batchSize)
            let body = PostableAlert.array(batch.map(\.1))
            let ep = state.targets[i].endpoint
            let outcome: Result<HTTPPost.Response, HTTPPost.Failure>
            do { outcome = .success(try HTTPPost.post(ep, path: "/api/v2/alerts", body: body, timeout: timeout)) } catch { outcome = .failure(error) }
            switch outcome {
            case .success(let r) where (200...299).contains(r.status):
                state.delivered(i, batch.map(\.0))
                let wasDown = !state.targets[i].up
                state.targets[i].up = true
                state.targets[i].failures = 0
                state.targets[i].everSucceeded = true
                let n = UInt64(batch.count)
                let wall = Date().timeIntervalSince1970
                updateStats { s in
                    s.targets[i].sent &+= n
                    s.targets[i].up = true
                    s.targets[i].lastSuccessUnix = wall
                }
                if wasDown {
                    logger.notice("Alertmanager reachable again; delivering firing and pending alerts", metadata: ["url": "\(ep.url)", "pending": "\(state.targets[i].pending.count)"])
                }
            case .success(let r) where r.status >= 400 && r.status < 500 && r.status != 408 && r.status != 429:
                // The Alertmanager refused these alerts; sending them again would be refused again.
                state.delivered(i, batch.map(\.0))
                let n = UInt64(batch.count)
                updateStats { s in
                    s.targets[i].failed &+= n
                    s.targets[i].failedRequests &+= 1
                }
                logger.error("Alertmanager refused alerts (HTTP \(r.status)); they are dropped for this target. Check its version (API v2 needed) and the URL path", metadata: [
                    "url": "\(ep.url)", "alerts": "\(batch.count)", "response": "\(printable(r.body.prefix(300)))",
                ])
            case .success(let r):
                fail(i, batch.count, "HTTP \(r.status): \(printable(r.body.prefix(200)))")
                return
            case .failure(let e):
                fail(i, batch.count, e.description)
                return
            }
        }
    }

    private func fail(_ i: Int, _ alerts: Int, _ reason: String) {
        let now = ContinuousClock.now
        state.targets[i].failures += 1
        let exp = min(Double(state.targets[i].failures - 1), 30)
        let cap = min(configuration.maxBackoff, Self.baseBackoff * pow(2, exp))
        let delay = cap * Double.random(in: 0.5...1.0)   // jitter: HA daemons do not retry in step
        state.targets[i].nextAttempt = now + .milliseconds(Int64(delay * 1000))
        let wasUp = state.targets[i].up
        state.targets[i].up = false
        let n = UInt64(alerts)
        updateStats { s in
            s.targets[i].failed &+= n
            s.targets[i].failedRequests &+= 1
            s.targets[i].up = false
        }
        let url = state.targets[i].endpoint.url
        if wasUp {
            state.targets[i].lastDownLog = now
            logger.warning("Alertmanager unreachable; retrying with back-off. Firing alerts are kept and re-sent when it answers; check that it runs and that alertmanager.urls is right", metadata: [
                "url": "\(url)", "error": "\(reason)", "retry_in_s": "\(String(format: "%.1f", delay))",
            ])
        } else if let last = state.targets[i].lastDownLog, now - last >= .seconds(300) {
            state.targets[i].lastDownLog = now
            logger.warning("Alertmanager still unreachable", metadata: [
                "url": "\(url)", "error": "\(reason)", "failed_attempts": "\(state.targets[i].failures)", "pending": "\(state.targets[i].pending.count)",
            ])
        }
    }

    private func publishStats() {
        condition.lock()
        let queued = mailbox.alerts
        condition.unlock()
        let firing = state.firing.count
        let overflow = state.overflow
        state.overflow = 0
        updateStats { s in
            s.queued = queued
            s.firing = firing
            s.dropped &+= overflow
        }
    }
}
