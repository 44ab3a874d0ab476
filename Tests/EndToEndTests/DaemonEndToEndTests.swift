import Foundation
import SaliencyCore
import SaliencyStream
import Testing

/// End-to-end: a real saliencyd process, real ZeroMQ sockets over ipc, a producer in this test.
enum E2E {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()
    static var daemonPath: String { ProcessInfo.processInfo.environment["SALIENCYD_BIN"] ?? root + "/.build/debug/saliencyd" }
    static var ctlPath: String { ProcessInfo.processInfo.environment["SALIENCYCTL"] ?? root + "/.build/debug/saliencyctl" }

    static func tempDir() -> String {
        let d = NSTemporaryDirectory() + "saliencyd-e2e-\(UInt64.random(in: 0...UInt64.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }
}

/// A running daemon on ipc endpoints in its own directory.
final class DaemonProcess {
    let dir: String
    let process = Process()
    let logPath: String
    var feed: String { "ipc://\(dir)/feed" }
    var alerts: String { "ipc://\(dir)/alerts" }
    var query: String { "ipc://\(dir)/query" }

    init(dir: String, extra: [String] = []) throws {
        self.dir = dir
        logPath = dir + "/daemon.log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: E2E.daemonPath)
        process.arguments = ["--feed", "ipc://\(dir)/feed", "--alerts", "ipc://\(dir)/alerts", "--query", "ipc://\(dir)/query",
                             "--state-dir", dir + "/state", "--metrics", ""] + extra
        let log = FileHandle(forWritingAtPath: logPath)!
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// SIGTERM and wait; returns the exit status.
    func stop(timeout: Double = 20) -> Int32 {
        process.terminate()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit(); return -9 }
        return process.terminationStatus
    }
}

/// Query client over REQ with a timeout.
struct Requester: ~Copyable {
    let ctx: ZMQContext
    let sock: ZMQSocket
    init(_ endpoint: String) throws {
        let c = try ZMQContext()
        let s = try c.socket(.req)
        try s.setReceiveTimeout(5000)
        try s.connect(endpoint)
        ctx = c
        sock = s
    }
    func ask(_ json: String) throws -> [String: Any] {
        _ = try sock.send(Array(json.utf8))
        let m = ZMQMultipart(maxFrames: 1)
        guard try sock.receive(into: m) else { throw SaliencyError(.transport, "no reply to \(json)") }
        return try JSONSerialization.jsonObject(with: Data(m.bytes(0))) as! [String: Any]
    }
    /// Polls `status` until `ok` (daemon up) or the deadline.
    static func waitReady(_ endpoint: String, seconds: Double = 30) throws -> Requester {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let r = try Requester(endpoint)
            if let s = try? r.ask("{\"op\":\"status\"}"), s["ok"] as? Bool == true { return r }
            if Date() > deadline { throw SaliencyError(.transport, "daemon did not answer on \(endpoint)") }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }
}

/// A producer: XPUB connected to the daemon's feed (sees its subscription, so nothing is lost).
struct Producer: ~Copyable {
    let ctx: ZMQContext
    let pub: ZMQSocket
    let schema: ModelSchema
    var header: PredictionHeader

    init(feed: String, schema: ModelSchema) throws {
        let c = try ZMQContext()
        let p = try c.socket(.xpub)
        try p.setSendHighWaterMark(0)
        try p.connect(feed)
        let m = ZMQMultipart(maxFrames: 1)
        let deadline = Date().addingTimeInterval(10)
        var subscribed = false
        while !subscribed && Date() < deadline {
            if try p.poll(timeout: 100).contains(.pollIn), try p.receive(into: m, dontWait: true) {
                subscribed = m.bytes(0).first == 1
            }
        }
        guard subscribed else { throw SaliencyError(.transport, "daemon never subscribed") }
        ctx = c
        pub = p
        self.schema = schema
        header = PredictionHeader(fingerprint: schema.fingerprint, producerID: 0xfeed, sequence: 0, timestampNanos: 0,
                                  predictedClass: 1, targetClass: 1, targetKind: .trueLabel)
    }

    func sendSchema() throws {
        _ = try pub.send(Topic.schema(schema.model), more: true)
        _ = try pub.send(SchemaMessage.encode(schema))
    }

    mutating func send(_ row: [Float]) throws {
        header.sequence += 1
        try sendRaw(header: header.encoded(), payload: row.withUnsafeBytes { Array($0) })
    }

    func sendRaw(topic: [UInt8]? = nil, header: [UInt8], payload: [UInt8]) throws {
        _ = try pub.send(topic ?? Topic.prediction(schema.model), more: true)
        _ = try pub.send(header, more: true)
        _ = try pub.send(payload)
    }

    func sendFrames(_ frames: [[UInt8]]) throws { _ = try pub.send(multipart: frames) }
}

/// Three layers with different tail families (as in docs/method.md §2's argument).
struct Feed {
    var rng: SplitMix64
    let schema: ModelSchema
    init(seed: UInt64) {
        rng = SplitMix64(seed: seed)
        schema = try! ModelSchema(model: "e2e", layers: [.init(name: "conv1", filters: 40), .init(name: "conv2", filters: 40), .init(name: "conv3", filters: 40)])
    }
    mutating func row() -> [Float] {
        (0..<120).map { j in
            let s = 0.5 + Double(j % 5) * 0.2
            switch j / 40 {
            case 0: return Float(s * exp(0.5 * rng.normal()))
            case 1: return Float(s * (pow(rng.uniform(), -0.3) - 1) / 0.3)
            default: return Float(s * abs(rng.normal()))
            }
        }
    }
}

/// Waits until the daemon has absorbed `rows` predictions of its first model.
func waitRows(_ q: borrowing Requester, _ rows: Int, seconds: Double = 120) throws {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        let s = try q.ask("{\"op\":\"status\"}")
        if let m = (s["models"] as? [[String: Any]])?.first, ((m["rows"] as? NSNumber)?.intValue ?? 0) >= rows { return }
        Thread.sleep(forTimeInterval: 0.05)
    }
    throw SaliencyError(.transport, "daemon did not absorb \(rows) rows in time")
}

@Suite(.serialized) struct DaemonEndToEndTests {
    @Test func calibrateAlertQueryRejectStopAndResume() throws {
        let dir = E2E.tempDir()
        let daemon = try DaemonProcess(dir: dir, extra: ["--calibration", "1000", "--log-level", "info"])
        var ok = false
        defer { if !ok { print("daemon log:\n" + daemon.log) } else { try? FileManager.default.removeItem(atPath: dir) } }
        let q = try Requester.waitReady(daemon.query)

        // Alerts subscriber first.
        let actx = try ZMQContext()
        let sub = try actx.socket(.sub)
        try sub.subscribe("alert.")
        try sub.connect(daemon.alerts)

        var feed = Feed(seed: 42)
        var producer = try Producer(feed: daemon.feed, schema: feed.schema)
        try producer.sendSchema()
        for _ in 0..<1000 { try producer.send(feed.row()) }
        // Bad input of every kind; none may reach the statistics or stop the daemon.
        var nan = feed.row(); nan[7] = .nan
        try producer.send(nan)
        var neg = feed.row(); neg[3] = -1
        try producer.send(neg)
        try producer.send(Array(feed.row().dropLast()))
        try producer.sendRaw(header: Array(producer.header.encoded().prefix(20)), payload: [1, 2, 3, 4])
        var alien = producer.header
        alien.fingerprint = 0x1234
        try producer.sendRaw(header: alien.encoded(), payload: feed.row().withUnsafeBytes { Array($0) })
        try producer.sendFrames([Array("pred.e2e".utf8)])
        try producer.sendFrames([Array("schema.e2e".utf8), Array("{not json".utf8)])

        // Clean traffic, then a shift: three planted filters (one per layer) far in their tails.
        let planted = [5, 47, 93]
        var cleanAlerts = 0
        for _ in 0..<1500 { try producer.send(feed.row()) }
        try waitRows(q, 2500)
        let msg = ZMQMultipart(maxFrames: 2)
        while try sub.receive(into: msg, dontWait: true) { cleanAlerts += 1 }
        for _ in 0..<60 {
            var r = feed.row()
            for j in planted { r[j] = 1000 }   // far beyond every filter's tail, heavy ones included (their 1e-6 quantile is ~200)
            try producer.send(r)
        }
        try waitRows(q, 2560)
        var fired = Set<Int>()
        var seqs: [Int] = []
        let deadline = Date().addingTimeInterval(10)
        while fired.count < planted.count && Date() < deadline {
            guard try sub.poll(timeout: 200).contains(.pollIn), try sub.receive(into: msg, dontWait: true) else { continue }
            let topic = msg.string(0)
            let a = try JSONSerialization.jsonObject(with: Data(msg.bytes(1))) as! [String: Any]
            let labels = a["labels"] as! [String: String]
            #expect(topic.hasPrefix("alert.firing.e2e."))
            #expect(a["status"] as? String == "firing")
            if let f = labels["filter"].flatMap(Int.init) { fired.insert(f) }
            seqs.append((a["seq"] as! NSNumber).intValue)
        }
        // Every row was processed (waitRows) before reading, so the rest is already published: the
        // model-level ModelShift alert (armed from the first monitored row) may come with the shift.
        while try sub.poll(timeout: 300).contains(.pollIn), try sub.receive(into: msg, dontWait: true) {
            let a = try JSONSerialization.jsonObject(with: Data(msg.bytes(1))) as! [String: Any]
            let labels = a["labels"] as! [String: String]
            #expect(labels["alertname"] == "ModelShift" || labels["filter"].flatMap(Int.init).map(planted.contains) == true, "\(labels)")
            seqs.append((a["seq"] as! NSNumber).intValue)
        }
        #expect(cleanAlerts == 0, "false alerts on clean traffic")
        #expect(fired == Set(planted))
        #expect(seqs == Array(seqs.sorted()))

        // Queries.
        let top = try q.ask("{\"op\":\"top\",\"model\":\"e2e\",\"k\":5}")
        #expect(top["ok"] as? Bool == true)
        let topFilters = (top["top"] as! [[String: Any]]).map { ($0["filter"] as! NSNumber).intValue }
        #expect(Set(topFilters.prefix(3)) == Set(planted))
        let status = try q.ask("{\"op\":\"status\"}")
        let rejected = status["rejected"] as! [String: Any]
        for reason in ["non_finite", "negative", "wrong_width", "malformed_frame", "unknown_schema", "invalid_schema"] {
            #expect((rejected[reason] as? NSNumber)?.intValue ?? 0 >= 1, "rejected[\(reason)]")
        }
        let model = (status["models"] as! [[String: Any]])[0]
        #expect(model["phase"] as? String == "monitoring")
        #expect((model["rows"] as! NSNumber).intValue == 1000 + 1500 + 60)
        #expect((status["gaps"] as! NSNumber).intValue == 0)
        let garbage = try q.ask("{\"op\": 12}")
        #expect(garbage["ok"] as? Bool == false)
        let missed = try q.ask("{\"op\":\"alerts\",\"since\":0}")
        #expect((missed["alerts"] as! [Any]).count == seqs.count)

        // saliencyctl against the live daemon.
        let ctl = Process()
        ctl.executableURL = URL(fileURLWithPath: E2E.ctlPath)
        ctl.arguments = ["top", "--model", "e2e", "-k", "3", "--json", "--query", daemon.query]
        let pipe = Pipe()
        ctl.standardOutput = pipe
        try ctl.run()
        ctl.waitUntilExit()
        let lines = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n")
        #expect(ctl.terminationStatus == 0)
        #expect(lines.count == 3)
        for l in lines {
            let o = try JSONSerialization.jsonObject(with: Data(l.utf8)) as! [String: Any]
            #expect(o["filter"] != nil && o["layer"] != nil && o["channel"] != nil && o["score"] != nil)
        }

        // Stop cleanly; the snapshot lets a restart resume without recalibrating.
        #expect(daemon.stop() == 0)
        #expect(FileManager.default.fileExists(atPath: dir + "/state/snapshot.bin"))
        let again = try DaemonProcess(dir: dir, extra: ["--calibration", "1000"])
        let q2 = try Requester.waitReady(again.query)
        let s2 = try q2.ask("{\"op\":\"status\"}")
        let m2 = (s2["models"] as! [[String: Any]]).first
        #expect(m2?["phase"] as? String == "monitoring")
        #expect((m2?["rows"] as? NSNumber)?.intValue == 1000 + 1500 + 60)
        #expect((s2["alert_seq"] as! NSNumber).intValue == seqs.max())
        #expect(again.stop() == 0)
        ok = true
    }
}
