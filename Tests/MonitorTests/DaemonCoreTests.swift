import EVTOnline
import Foundation
import Logging
import SaliencyCore
import SaliencyStream
import Testing
@testable import SaliencyMonitor

/// Builds a DaemonCore over a temp state directory, with frames fed in-process (no sockets).
struct Harness {
    let dir: String
    let core: DaemonCore
    let schema: ModelSchema
    var header: PredictionHeader
    var rng: SplitMix64

    init(seed: UInt64 = 1, calibration: Int = 200, filters: [Int] = [8, 12, 4], configure: (inout DaemonConfiguration) -> Void = { _ in }) throws {
        dir = NSTemporaryDirectory() + "saliencyd-core-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var cfg = DaemonConfiguration()
        cfg.state.directory = dir
        cfg.pot.calibration = calibration
        configure(&cfg)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        core = DaemonCore(configuration: cfg, alertLog: try AlertLog(directory: dir, maxEntries: 1000), logger: logger, metrics: DaemonMetrics())
        schema = try ModelSchema(model: "m", layers: filters.enumerated().map { .init(name: "l\($0.offset)", filters: $0.element) })
        header = PredictionHeader(fingerprint: schema.fingerprint, producerID: 7, sequence: 0, timestampNanos: 0, predictedClass: 0, targetClass: 0, targetKind: .trueLabel)
        rng = SplitMix64(seed: seed)
    }

    func feed(_ frames: [[UInt8]]) {
        let buffers = frames.map { f -> UnsafeMutableRawBufferPointer in
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: max(f.count, 1), alignment: 1)
            b.copyMemory(from: UnsafeRawBufferPointer(start: f, count: f.count))
            return b
        }
        defer { buffers.forEach { $0.deallocate() } }
        core.handleFeed(count: frames.count) { i in UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffers[i])[0..<frames[i].count]) }
    }

    /// Feeds the frames through a real ZeroMQ message (inproc PUSH → PULL into a ZMQMultipart), so
    /// the core takes the zero-copy path: a valid payload frame is moved into the model's window.
    func feedViaSocket(_ frames: [[UInt8]], _ pair: SocketPair) throws {
        for (i, f) in frames.enumerated() { _ = try pair.push.send(f, more: i < frames.count - 1) }
        guard try pair.pull.receive(into: pair.message) else { throw SaliencyError(.io, "inproc receive timed out") }
        core.handleFeed(count: pair.message.count, message: pair.message) { pair.message.frame($0) }
    }

    func sendSchema() { feed([Topic.schema(schema.model), SchemaMessage.encode(schema)]) }

    mutating func row(scale: Float = 1) -> [Float] { (0..<schema.filterCount).map { _ in scale * Float(exp(0.5 * rng.normal())) } }

    mutating func send(_ row: [Float]) {
        header.sequence += 1
        feed([Topic.prediction(schema.model), header.encoded(), row.withUnsafeBytes { Array($0) }])
    }

    func query(_ json: String) -> [String: Any] {
        let bytes = Array(json.utf8)
        let reply = bytes.withUnsafeBytes { core.handleQuery($0, admin: true, snapshot: { .success("x") }, lastSnapshot: nil) }
        return (try? JSONSerialization.jsonObject(with: Data(reply))) as? [String: Any] ?? [:]
    }

    var engine: ModelEngine? { core.engines[schema.fingerprint] }
}

/// An inproc PUSH/PULL pair and a receive buffer, for feeding a DaemonCore real ZeroMQ messages.
final class SocketPair {
    let ctx: ZMQContext
    let push: ZMQSocket
    let pull: ZMQSocket
    let message = ZMQMultipart(maxFrames: 4)
    init() throws {
        ctx = try ZMQContext()
        pull = try ctx.socket(.pull)
        let ep = "inproc://core-\(UInt64.random(in: 0...UInt64.max))"
        try pull.bind(ep)
        try pull.setReceiveTimeout(2000)
        push = try ctx.socket(.push)
        try push.connect(ep)
    }
}

@Suite struct DaemonCoreTests {
    /// The zero-copy path (payload frame moved into the window, read where libzmq put it) leaves
    /// exactly the state the copying path leaves, for payloads small enough to live inside the
    /// message structure and large ones, and rejects bad payloads without touching the window.
    @Test(arguments: [[2, 3, 1], [200, 150, 90]])
    func zeroCopyFeedEqualsCopyingFeed(filters: [Int]) throws {
        var a = try Harness(seed: 5, calibration: 200, filters: filters)
        let b = try Harness(seed: 5, calibration: 200, filters: filters)
        defer { try? FileManager.default.removeItem(atPath: a.dir); try? FileManager.default.removeItem(atPath: b.dir) }
        let pair = try SocketPair()
        a.sendSchema()
        try b.feedViaSocket([Topic.schema(b.schema.model), SchemaMessage.encode(b.schema)], pair)
        var header = a.header
        for i in 0..<400 {
            var r = a.row(scale: i >= 300 && i % 7 == 0 ? 30 : 1)
            if i == 350 { r[1] = .nan }   // rejected by both, windows untouched
            header.sequence += 1
            let frames = [Topic.prediction(a.schema.model), header.encoded(), r.withUnsafeBytes { Array($0) }]
            a.feed(frames)
            try b.feedViaSocket(frames, pair)
            let ea = try #require(a.engine), eb = try #require(b.engine)
            #expect(Array(try #require(ea.latestRow)) == Array(try #require(eb.latestRow)))
        }
        let ea = try #require(a.engine), eb = try #require(b.engine)
        #expect(ea.serializedBankState() == eb.serializedBankState())
        #expect(ea.tracker.state == eb.tracker.state)
        #expect(ea.recentRows(10).map(Array.init) == eb.recentRows(10).map(Array.init))
        #expect(a.core.rejected == b.core.rejected && a.core.rejected[.nonFinite] == 1)
    }

    /// Property test of the frame path: random and mutated frames never crash, never enter the
    /// statistics, and every message is either absorbed or counted as rejected.
    @Test func randomAndMutatedFramesAreRejectedAndCounted() throws {
        var h = try Harness(seed: 11)
        h.sendSchema()
        for _ in 0..<200 { h.send(h.row()) }
        #expect(h.engine?.isCalibrated == true)
        let valid = [Topic.prediction(h.schema.model), h.header.encoded(), h.row().withUnsafeBytes { Array($0) }]
        var rng = SplitMix64(seed: 99)
        var sent = 0
        let tried = 30_000
        for i in 0..<tried {
            var frames = valid
            switch i % 6 {
            case 0:  // random frames
                frames = (0..<Int(rng.next() % 5)).map { _ in (0..<Int(rng.next() % 80)).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }
            case 1:  // flip bytes in the header
                for _ in 0..<(1 + Int(rng.next() % 4)) { let k = Int(rng.next() % 64); frames[1][k] ^= UInt8(truncatingIfNeeded: rng.next() | 1) }
            case 2:  // poison a payload value with NaN, ±inf or a negative
                let k = Int(rng.next() % UInt64(h.schema.filterCount)) * 4
                let bad: [Float] = [.nan, .infinity, -.infinity, -1, -Float.leastNonzeroMagnitude]
                withUnsafeBytes(of: bad[Int(rng.next() % 5)]) { for b in 0..<4 { frames[2][k + b] = $0[b] } }
            case 3:  // truncate or extend a frame
                let f = Int(rng.next() % 3)
                if rng.next() % 2 == 0 { frames[f] = Array(frames[f].prefix(Int(rng.next() % UInt64(frames[f].count + 1)))) } else { frames[f] += [0, 1, 2] }
            case 4:  // wrong frame count
                frames = rng.next() % 2 == 0 ? Array(frames.prefix(2)) : frames + [[1]]
            default: // wrong topic
                frames[0] = Array("pred.\(rng.next() % 3 == 0 ? "other" : "m.x")".utf8)
            }
            h.feed(frames)
            sent += 1
        }
        let core = h.core
        let rejected = core.rejected.values.reduce(0, +)
        let absorbed = h.engine!.rows - 200
        #expect(Int(rejected) + Int(absorbed) == sent)
        // Every absorbed row was valid: the bank's own validation never saw a bad row.
        #expect(h.engine!.rejectedRows.isEmpty)
        for j in 0..<h.schema.filterCount {
            let r = h.engine!.report(filter: j)
            #expect(r.mean.isFinite && r.standardDeviation.isFinite && r.threshold.isFinite)
        }
        // Still serving.
        h.send(h.row())
        #expect(h.query("{\"op\":\"status\"}")["ok"] as? Bool == true)
        print("frame property test: \(tried) inputs, \(rejected) rejected by reason \(core.rejected), \(absorbed) absorbed")
    }

    @Test func garbageQueriesGetJSONErrors() throws {
        var h = try Harness(seed: 12)
        h.sendSchema()
        for _ in 0..<200 { h.send(h.row()) }
        var rng = SplitMix64(seed: 5)
        let valid = [#"{"op":"top","model":"m","k":5}"#, #"{"op":"filter","model":"m","filter":3}"#, #"{"op":"status"}"#, #"{"op":"alerts","since":0}"#]
        for i in 0..<5000 {
            var bytes: [UInt8]
            if i % 2 == 0 {
                bytes = (0..<Int(rng.next() % 200)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            } else {
                bytes = Array(valid[i % valid.count].utf8)
                for _ in 0..<(1 + Int(rng.next() % 3)) where !bytes.isEmpty {
                    bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next())
                }
            }
            let reply = bytes.withUnsafeBytes { h.core.handleQuery($0, admin: false, snapshot: { .success("x") }, lastSnapshot: nil) }
            let obj = try JSONSerialization.jsonObject(with: Data(reply)) as? [String: Any]
            #expect(obj?["ok"] is Bool)
            if obj?["ok"] as? Bool == false {
                let e = obj?["error"] as? [String: Any]
                #expect(e?["code"] is String && e?["message"] is String)
            }
        }
        let huge = Array(repeating: UInt8(ascii: " "), count: 70_000)
        let reply = huge.withUnsafeBytes { h.core.handleQuery($0, admin: true, snapshot: { .success("x") }, lastSnapshot: nil) }
        #expect(String(decoding: reply, as: UTF8.self).contains("too_large"))
        let forbidden = Array(#"{"op":"reset","model":"m"}"#.utf8).withUnsafeBytes { h.core.handleQuery($0, admin: false, snapshot: { .success("x") }, lastSnapshot: nil) }
        #expect(String(decoding: forbidden, as: UTF8.self).contains("forbidden"))
        #expect(h.engine != nil)
    }

    @Test func sequenceGapsAndReorderingAreCounted() throws {
        var h = try Harness(seed: 13)
        h.sendSchema()
        h.send(h.row())
        h.header.sequence += 5           // 5 lost upstream
        h.send(h.row())
        h.header.sequence -= 3           // a late one
        h.send(h.row())
        let p = h.core.producers[7]!
        #expect(p.gaps == 5)
        #expect(p.reordered == 1)
        #expect(h.core.gapsTotal == 5)
    }

    @Test func unknownSchemaIsHeldOutAndNotGuessed() throws {
        var h = try Harness(seed: 14)
        h.send(h.row())                  // no schema yet
        #expect(h.core.rejected[.unknownSchema] == 1)
        #expect(h.core.engines.isEmpty)
        h.sendSchema()
        h.send(h.row())
        #expect(h.engine?.rows == 1)
    }
}

@Suite struct SnapshotTests {
    func calibratedHarness() throws -> Harness {
        var h = try Harness(seed: 21)
        h.sendSchema()
        for _ in 0..<260 { h.send(h.row()) }
        for _ in 0..<30 { var r = h.row(); r[3] = 500; h.send(r) }   // an alert fires
        return h
    }

    @Test func roundTripRestoresIdenticalStateAndBehaviour() throws {
        var h = try calibratedHarness()
        #expect(h.engine!.active[3] != nil)
        let bytes = try SnapshotStore.encode(h.core)
        let restored = try SnapshotStore.decode(bytes, configuration: h.core.configuration)
        #expect(restored.engines.count == 1)
        let e = restored.engines[0]
        let live = h.engine!
        for j in 0..<live.filterCount { #expect(e.report(filter: j) == live.report(filter: j)) }
        #expect(e.tracker.state == live.tracker.state)
        #expect(e.active.keys.sorted() == live.active.keys.sorted())
        // Same next rows → same results.
        for _ in 0..<50 {
            let r = h.row()
            let a = r.withUnsafeBufferPointer { live.absorb($0) }
            let b = r.withUnsafeBufferPointer { e.absorb($0) }
            #expect(a == b)
            #expect(live.events == e.events)
        }
    }

    @Test func driftStateRoundTrips() throws {
        var cfg = POTConfiguration()
        cfg.calibration = 300
        cfg.driftWindow = 25
        let bank = try FilterBank(filterCount: 7, configuration: cfg)
        var rng = SplitMix64(seed: 9)
        for _ in 0..<500 { let r = (0..<7).map { _ in Float(exp(rng.normal())) }; r.withUnsafeBufferPointer { _ = bank.update($0) } }
        let copy = try FilterBank(restoring: bank.serializedState(), configuration: cfg)
        for _ in 0..<100 {
            let r = (0..<7).map { _ in Float(exp(rng.normal())) }
            let a = r.withUnsafeBufferPointer { bank.update($0) }, b = r.withUnsafeBufferPointer { copy.update($0) }
            #expect(a == b)
        }
        for j in 0..<7 { #expect(bank.report(filter: j) == copy.report(filter: j)) }
    }

    /// Truncations and bit flips anywhere are refused with an error — never a crash, never a silent load.
    @Test func corruptedOrTruncatedSnapshotsAreRefused() throws {
        let h = try calibratedHarness()
        let bytes = try SnapshotStore.encode(h.core)
        var rng = SplitMix64(seed: 3)
        var refused = 0
        for i in 0..<400 {
            var bad = bytes
            if i % 2 == 0 {
                bad = Array(bad.prefix(Int(rng.next() % UInt64(bad.count))))
            } else {
                let k = Int(rng.next() % UInt64(bad.count))
                bad[k] ^= UInt8(1 << (rng.next() % 8))
            }
            do {
                _ = try SnapshotStore.decode(bad, configuration: h.core.configuration)
                Issue.record("corrupted snapshot \(i) was accepted")
            } catch {
                refused += 1
            }
        }
        #expect(refused == 400)
        // Other version, other pot settings.
        var v2 = bytes
        v2[4] = 2
        #expect(throws: SaliencyError.self) { try SnapshotStore.decode(v2, configuration: h.core.configuration) }
        var other = h.core.configuration
        other.pot.level = 0.95
        #expect(throws: SaliencyError.self) { try SnapshotStore.decode(bytes, configuration: other) }
    }

    @Test func storeFallsBackToPreviousAndSetsBadFilesAside() throws {
        let h = try calibratedHarness()
        var logger = Logger(label: "t")
        logger.logLevel = .critical
        let store = SnapshotStore(directory: h.dir, logger: logger)
        guard case .success? = store.write(h.core, wait: true) else { Issue.record("write failed"); return }
        guard case .success? = store.write(h.core, wait: true) else { Issue.record("write failed"); return }
        #expect(FileManager.default.fileExists(atPath: store.previousPath))
        // Corrupt the current one: restore must take the previous and move the bad one aside.
        var cur = try [UInt8](Data(contentsOf: URL(fileURLWithPath: store.currentPath)))
        cur[cur.count / 2] ^= 0xff
        try Data(cur).write(to: URL(fileURLWithPath: store.currentPath))
        let fresh = try Harness(seed: 1)
        var cfg = fresh.core.configuration
        cfg.state.directory = h.dir
        let core2 = DaemonCore(configuration: h.core.configuration, alertLog: try AlertLog(directory: h.dir, maxEntries: 1000), logger: logger, metrics: DaemonMetrics())
        store.restore(into: core2)
        #expect(core2.engines.count == 1)
        let aside = try FileManager.default.contentsOfDirectory(atPath: h.dir).filter { $0.contains(".rejected-") }
        #expect(aside.count == 1)
    }
}

@Suite struct AlertLogTests {
    func tempDir() -> String {
        let d = NSTemporaryDirectory() + "alertlog-\(UInt64.random(in: 0...UInt64.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    @Test func sequencesSurviveReopenTornLinesAndRetention() throws {
        let d = tempDir()
        do {
            let log = try AlertLog(directory: d, maxEntries: 100)
            for _ in 0..<10 { let s = log.nextSequence; try log.append(seq: s, json: Array("{\"seq\":\(s)}".utf8)) }
        }
        // A torn last line, as after a crash mid-append.
        let fh = FileHandle(forWritingAtPath: d + "/alerts.jsonl")!
        fh.seekToEndOfFile(); fh.write(Data("{\"seq\":11,\"sta".utf8)); fh.closeFile()
        let log = try AlertLog(directory: d, maxEntries: 100)
        #expect(log.recoveryNote != nil)
        #expect(log.nextSequence == 11)
        let (e, oldest) = log.entries(since: 7, limit: 100)
        #expect(e.count == 3 && oldest == 1)
        for _ in 0..<200 { let s = log.nextSequence; try log.append(seq: s, json: Array("{\"seq\":\(s)}".utf8)) }
        #expect(log.count <= 100)
        let (all, first) = log.entries(since: 0, limit: 1000)
        let seqs = all.map { (try! JSONSerialization.jsonObject(with: Data($0)) as! [String: Any])["seq"] as! Int }
        #expect(seqs == Array(Int(first)...210))
        let reopened = try AlertLog(directory: d, maxEntries: 100)
        #expect(reopened.nextSequence == 211)
    }
}

@Suite struct ConfigurationTests {
    @Test func defaultsAreValidAndTheExampleFileParses() throws {
        try DaemonConfiguration().validate()
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        let c = try DaemonConfiguration.load(path: url.path + "/systemd/saliencyd.toml")
        try c.validate()
    }

    /// Valid but doubtful settings get advice (not an error); the defaults get none.
    @Test func doubtfulSettingsGetAdvice() throws {
        #expect(DaemonConfiguration().warnings.isEmpty)
        let c = try DaemonConfiguration.parse(toml: "[pot]\nlevel = 0.98\ncalibration = 1000")
        try c.validate()
        #expect(c.warnings.count == 1)
        #expect(c.warnings.first?.contains("20 peaks per filter") == true)
        #expect(c.warnings.first?.contains("Raise pot.calibration to 2500") == true)
        let ok = try DaemonConfiguration.parse(toml: "[pot]\nlevel = 0.98\ncalibration = 2500")
        #expect(ok.warnings.isEmpty)
    }

    @Test func mistakesAreExplained() {
        func err(_ toml: String) -> String {
            do { _ = try DaemonConfiguration.parse(toml: toml); return "" } catch { return error.message }
        }
        #expect(err("[pot]\nlevle = 0.9").contains("did you mean 'level'"))
        #expect(err("[pott]\nlevel = 0.9").contains("unknown section [pott]"))
        #expect(err("[pot]\nlevel = \"high\"").contains("pot.level must be a number"))
        #expect(err("[feed]\nbind = 1").contains("feed.bind must be true or false"))
        #expect(err("[feed\nendpoint = 1").contains("line"))
        var c = DaemonConfiguration()
        c.pot.q = 0.5
        #expect(throws: SaliencyError.self) { try c.validate() }
        c = DaemonConfiguration()
        c.feed.endpoint = "localhost:5560"
        #expect(throws: SaliencyError.self) { try c.validate() }
    }

    @Test func alertingKeysReachTheRule() throws {
        let c = try DaemonConfiguration.parse(toml: "[alerting]\nmodel_burn_in = 500\nsafety_factor = 8\n")
        #expect(c.modelBurnIn == 500 && c.alertSafetyFactor == 8)
        let schema = try ModelSchema(model: "m", layers: [.init(name: "a", filters: 50)])
        let e = try ModelEngine(schema: schema, pot: c.pot, budget: c.alerting, safetyFactor: c.alertSafetyFactor, modelBurnIn: c.modelBurnIn, recentRows: 4)
        #expect(e.tracker.rule.model.burnIn == 500)
        let loose = try ModelEngine(schema: schema, pot: c.pot, budget: c.alerting, safetyFactor: 1, recentRows: 4)
        // A larger safety factor designs a stricter rule: fewer false alerts per prediction at q.
        #expect(e.tracker.rule.falseAlertsPerPrediction(filters: 50, q: c.pot.q) <= loose.tracker.rule.falseAlertsPerPrediction(filters: 50, q: c.pot.q))
        #expect(throws: SaliencyError.self) { try DaemonConfiguration.parse(toml: "[alerting]\nmodel_burn_in = 5\n").validate() }
    }

    @Test func reloadRefusesChangesThatNeedARestart() {
        let a = DaemonConfiguration()
        var b = a
        b.alerts.resendInterval = 5
        b.monitor.logLevel = "debug"
        #expect(b.restartRequired(comparedTo: a).isEmpty)
        b.pot.level = 0.95
        b.feed.endpoint = "tcp://127.0.0.1:6000"
        #expect(Set(b.restartRequired(comparedTo: a)) == ["pot", "feed"])
    }
}
