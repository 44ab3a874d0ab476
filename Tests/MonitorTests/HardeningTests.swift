import EVTOnline
import Foundation
import Logging
import SaliencyCore
import SaliencyStream
import Synchronization
import Testing
@testable import SaliencyMonitor
#if canImport(Glibc)
import Glibc
#endif

/// Issue 9 (docs/security.md): what a hostile schema, frame, file or configuration can do to the
/// daemon's logic, tested without sockets. The same findings are attacked on a real daemon
/// process in Tests/Python/test_hardening.py.
@Suite struct SchemaAdmissionTests {
    func schemaBytes(_ model: String, _ layers: [(String, Int)]) -> [UInt8] {
        let l = layers.map { "{\"name\":\"\($0.0)\",\"filters\":\($0.1)}" }.joined(separator: ",")
        return Array("{\"model\":\"\(model)\",\"layers\":[\(l)]}".utf8)
    }

    @Test func overflowingFilterCountsAreInvalidNotATrap() throws {
        for layers in [[("a", 1), ("b", Int.max)], [("a", Int.max), ("b", Int.max)], [("a", 1 << 24), ("b", 1)], [("a", -1)]] {
            let bytes = schemaBytes("m", layers)
            #expect(throws: SaliencyError.self) { try SchemaMessage.decode(bytes, topicModel: "m") }
        }
        #expect(throws: SaliencyError.self) { try ModelSchema(model: "m", layers: [.init(name: "a\u{1}b", filters: 1)]) }
        #expect(throws: SaliencyError.self) { try ModelSchema(model: "m", layers: [.init(name: String(repeating: "x", count: 513), filters: 1)]) }
        #expect(throws: SaliencyError.self) { try ModelSchema(model: "m", layers: [.init(name: "a", filters: 1, depth: -3)]) }
        #expect(try ModelSchema(model: "m", layers: [.init(name: "a", filters: 1 << 23), .init(name: "b", filters: 1 << 23)]).filterCount == 1 << 24)
    }

    @Test func costIsComputedWithCheckedArithmeticBeforeAllocating() {
        var pot = POTConfiguration()
        pot.calibration = 1_000_000
        #expect(FilterBank.maximumBytes(filterCount: 1 << 24, configuration: pot) != nil)   // 2^24 × ~4 MB fits an Int …
        #expect(FilterBank.maximumBytes(filterCount: Int.max / 2, configuration: pot) == nil)   // … this does not
        let k = 26_560
        let bytes = FilterBank.maximumBytes(filterCount: k, configuration: POTConfiguration())!
        // Calibration buffer + rings + columns: between 5 and 6 KB per filter at the defaults.
        #expect(bytes > k * 5_000 && bytes < k * 6_000)
    }

    @Test func schemasBeyondTheBudgetAreRefusedAndCounted() throws {
        let h = try Harness(configure: { $0.limits.maxModelBytes = 2 << 20; $0.limits.maxTotalBytes = 9 << 19 })
        // 2^19 filters would claim ~2.7 GB: refused before any allocation.
        h.feed([Topic.schema("big"), schemaBytes("big", [("a", 1 << 19)])])
        #expect(h.core.rejected[.overBudget] == 1)
        #expect(h.core.engines.isEmpty)
        // Three models of ~1.44 MB (400 filters × ~3.6 KB at calibration 200, the model-level
        // cross-fit's transient fold bank included) fit 4.5 MiB; the fourth does not.
        for i in 0..<4 { h.feed([Topic.schema("m\(i)"), schemaBytes("m\(i)", [("a", 400)])]) }
        #expect(h.core.engines.count == 3)
        #expect(h.core.rejected[.overBudget] == 2)
        #expect(h.core.admittedBytes == h.core.engines.values.reduce(0) { $0 + $1.maximumBytes })
        // Forgetting a model gives its budget back.
        let fp = h.core.byName["m0"]!
        h.core.remove(fp)
        h.feed([Topic.schema("m3"), schemaBytes("m3", [("a", 400)])])
        #expect(h.core.engines.count == 3)
    }

    @Test func tooManyLayersAreInvalid() throws {
        let h = try Harness(configure: { $0.limits.maxLayers = 100 })
        h.feed([Topic.schema("wide"), schemaBytes("wide", (0..<101).map { ("l\($0)", 1) })])
        #expect(h.core.rejected[.invalidSchema] == 1)
        h.feed([Topic.schema("ok"), schemaBytes("ok", (0..<100).map { ("l\($0)", 1) })])
        #expect(h.core.engines.count == 1)
    }

    @Test func anotherLayoutNeverTakesALiveModelsName() throws {
        var h = try Harness()
        h.sendSchema()
        for _ in 0..<10 { h.send(h.row()) }
        let live = h.core.byName["m"]
        h.feed([Topic.schema("m"), schemaBytes("m", [("l0", 9)])])
        #expect(h.core.rejected[.schemaConflict] == 1)
        #expect(h.core.byName["m"] == live)
        #expect(h.core.engines.count == 1)
        // Replacing is an explicit choice.
        let r = try Harness(configure: { $0.limits.layoutChange = "replace" })
        r.sendSchema()
        r.feed([Topic.schema("m"), schemaBytes("m", [("l0", 9)])])
        #expect(r.core.engines.count == 2)
        #expect(r.core.engines[r.core.byName["m"]!]!.filterCount == 9)
    }

    @Test func modelsNobodyFeedsExpireOnlyWhenConfigured() throws {
        var h = try Harness(calibration: 100, configure: { $0.limits.calibratingIdleExpiry = 10; $0.limits.idleExpiry = 0 })
        h.sendSchema()
        h.feed([Topic.schema("junk"), schemaBytes("junk", [("a", 4)])])
        for _ in 0..<110 { h.send(h.row()) }   // "m" calibrates; "junk" never gets a row
        #expect(h.core.engines.count == 2)
        #expect(h.core.expireIdleModels(now: .now + .seconds(5)) == 0)
        #expect(h.core.expireIdleModels(now: .now + .seconds(11)) == 1)
        #expect(h.core.byName["junk"] == nil)
        #expect(h.core.engines[h.schema.fingerprint] != nil, "a calibrated model is never dropped with idle_expiry = 0")
        #expect(h.core.expireIdleModels(now: .now + .seconds(1_000_000)) == 0)
        #expect(h.core.modelsExpired == 1)
    }

    @Test func perModelCostIsSmallForSmallModels() throws {
        let h = try Harness()
        let clock = ContinuousClock()
        let t = clock.measure {
            for i in 0..<16 { h.feed([Topic.schema("s\(i)"), schemaBytes("s\(i)", [("a", 4)])]) }
        }
        #expect(h.core.engines.count == 16)
        // One alert-rule design (memoized per filter count) and a few KB each, not 2 MB and 28 ms.
        #expect(h.core.engines.values.allSatisfy { $0.maximumBytes < 200_000 })
        #expect(t < .seconds(2), "16 small schemas took \(t)")
    }
}

@Suite struct FeedBookkeepingTests {
    @Test func aRejectedForgedFrameNeverMovesSequenceState() throws {
        var h = try Harness()
        h.sendSchema()
        for _ in 0..<5 { h.send(h.row()) }
        // Forged: the real producer id, sequence 2^64 − 1, a negative payload.
        var forged = h.header
        forged.sequence = .max
        var bad = h.row(); bad[0] = -1
        h.feed([Topic.prediction("m"), forged.encoded(), bad.withUnsafeBytes { Array($0) }])
        // And a rejected frame from a producer nobody has seen: no entry.
        var stranger = h.header
        stranger.producerID = 0xbad
        h.feed([Topic.prediction("m"), stranger.encoded(), bad.withUnsafeBytes { Array($0) }])
        for _ in 0..<5 { h.send(h.row()) }
        #expect(h.core.gapsTotal == 0)
        #expect(h.core.producers[7]?.lastSequence == 10)
        #expect(h.core.producers[0xbad] == nil)
        #expect(h.core.rejected[.negative] == 2)
    }

    @Test func anHonestRejectedRowIsNotAGap() throws {
        var h = try Harness()
        h.sendSchema()
        h.send(h.row())
        var nan = h.row(); nan[1] = .nan
        h.send(nan)                   // seq 2, rejected, exactly last + 1
        h.send(h.row())               // seq 3
        #expect(h.core.gapsTotal == 0)
        #expect(h.core.producers[7]?.received == 2)
    }

    @Test func theProducerTableIsBounded() throws {
        var h = try Harness(configure: { $0.limits.maxProducers = 50 })
        h.sendSchema()
        for id in 0..<500 as Range<UInt64> {
            h.header.producerID = id
            h.send(h.row())
        }
        #expect(h.core.producers.count == 50)
        // The 50 most recently seen survive.
        #expect(Set(h.core.producers.keys) == Set(450..<500))
        let s = h.query("{\"op\":\"status\"}")
        #expect((s["producer_count"] as? NSNumber)?.intValue == 50)
        #expect((s["producers"] as? [Any])?.count == DaemonCore.statusProducers)
    }
}

/// Captures log lines (LogLimiter tests).
final class CapturedLog: @unchecked Sendable {
    let lines = Mutex<[String]>([])
    func logger() -> Logger {
        Logger(label: "capture") { _ in Handler(sink: self) }
    }
    struct Handler: LogHandler {
        let sink: CapturedLog
        var logLevel: Logger.Level = .trace
        var metadata: Logger.Metadata = [:]
        subscript(metadataKey key: String) -> Logger.Metadata.Value? { get { metadata[key] } set { metadata[key] = newValue } }
        func log(event: LogEvent) { sink.lines.withLock { $0.append("\(event.message)") } }
    }
    var all: [String] { lines.withLock { $0 } }
}

@Suite struct LogLimiterTests {
    @Test func burstThenSuppressedThenSummedUp() {
        let cap = CapturedLog()
        let log = cap.logger()
        let l = LogLimiter(burst: 5)
        let t0 = ContinuousClock.now
        for i in 0..<1000 { l.log(log, .warning, kind: "sequence gap", "gap \(i)", now: t0 + .milliseconds(i)) }
        l.log(log, .warning, kind: "new producer", "other kind", now: t0)
        #expect(cap.all.filter { $0.hasPrefix("gap") }.count == 5)
        #expect(cap.all.contains("other kind"))
        #expect(l.suppressedTotal == 995)
        l.flush(log, now: t0 + .seconds(61))
        #expect(cap.all.contains { $0.contains("suppressed 995 'sequence gap'") })
        // A new minute allows new lines.
        l.log(log, .warning, kind: "sequence gap", "gap again", now: t0 + .seconds(62))
        #expect(cap.all.contains("gap again"))
    }
}

@Suite struct ConfigurationHardeningTests {
    func check(_ toml: String) -> String? {
        do {
            try DaemonConfiguration.parse(contents: Array(toml.utf8), source: "t").validate()
            return nil
        } catch { return error.message }
    }

    @Test func everyNumericKeyHasAFiniteRange() {
        for (toml, key) in [
            ("[state]\nsnapshot_interval = inf", "state.snapshot_interval"),
            ("[state]\nsnapshot_interval = 1e300", "state.snapshot_interval"),
            ("[alerts]\nresend_interval = inf", "alerts.resend_interval"),
            ("[alerts]\nresend_interval = nan", "alerts.resend_interval"),
            ("[pot]\ncalibration = 4611686018427387904", "calibration"),
            ("[pot]\ndrift_window = 1000", "drift_window"),
            ("[pot]\ndrift_window = 950", "drift_window"),
            ("[feed]\nreceive_hwm = 0", "feed.receive_hwm"),
            ("[limits]\nmax_model_bytes = 9223372036854775807", "limits.max_model_bytes"),
            ("[limits]\nidle_expiry = -1", "limits.idle_expiry"),
            ("[limits]\nlayout_change = \"yes\"", "limits.layout_change"),
            ("[query]\nmax_inflight = 0", "query.max_inflight"),
            ("[monitor]\nmax_models = 1000000", "monitor.max_models"),
        ] {
            let m = check(toml)
            #expect(m?.contains(key) == true, "\(toml) → \(m ?? "accepted")")
        }
        #expect(check("[pot]\ndrift_window = 100") == nil)
        #expect(check("# only a comment\n") == nil)
    }

    @Test func nulBytesInvalidUTF8AndEmptyFilesAreRefused() {
        var nul = Array("[feed]\nbind = true\n".utf8)
        nul.append(0)
        nul += Array("\n[security]\ncurve = true\n".utf8)
        #expect(check(String(decoding: nul, as: UTF8.self))?.contains("NUL byte") == true)
        do {
            _ = try DaemonConfiguration.parse(contents: [0x5B, 0x66, 0xFF, 0x5D], source: "t")
            Issue.record("invalid UTF-8 accepted")
        } catch { #expect(error.message.contains("UTF-8")) }
        do {
            _ = try DaemonConfiguration.parse(contents: [], source: "t")
            Issue.record("empty file accepted")
        } catch { #expect(error.message.contains("empty")) }
    }

    @Test func securityListsNeedCurve() {
        #expect(check("[security]\nallowed_clients_file = \"/etc/x\"")?.contains("curve") == true)
    }
}

@Suite struct StateHardeningTests {
    func tempDir() -> String {
        let d = NSTemporaryDirectory() + "saliencyd-hard-\(UInt64.random(in: 0...UInt64.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    @Test func oneDaemonPerStateDirectory() throws {
        let d = tempDir()
        let a = StateDirectory(path: d)
        try a.lock()
        let b = StateDirectory(path: d)
        do {
            try b.lock()
            Issue.record("second lock taken")
        } catch {
            #expect(error.message.contains("in use"))
            #expect(error.message.contains("\(getpid())"))
        }
    }

    @Test func staleTemporariesRemovedAndNonFilesMovedAside() throws {
        let d = tempDir()
        for name in ["snapshot.bin.new", "snapshot.bin.new.tmp.4242", "alerts.jsonl.tmp.17"] {
            FileManager.default.createFile(atPath: d + "/" + name, contents: Data([1, 2, 3]))
        }
        FileManager.default.createFile(atPath: d + "/keep.tmp.x", contents: Data([1]))
        try FileManager.default.createDirectory(atPath: d + "/snapshot.bin", withIntermediateDirectories: false)
        let notes = StateDirectory(path: d).tidy()
        let left = Set(try FileManager.default.contentsOfDirectory(atPath: d))
        #expect(!left.contains("snapshot.bin.new") && !left.contains("snapshot.bin.new.tmp.4242") && !left.contains("alerts.jsonl.tmp.17"))
        #expect(left.contains("keep.tmp.x"))
        #expect(!left.contains("snapshot.bin"))
        #expect(left.contains { $0.hasPrefix("snapshot.bin.rejected-") })
        #expect(notes.count == 4)
    }

    @Test func alertLogLinesWithOutOfRangeSeqAreDroppedNotATrap() throws {
        let d = tempDir()
        let lines = [
            "{\"seq\":1,\"status\":\"firing\"}", "{\"seq\":18446744073709551615}", "{\"seq\":1e30}", "{\"seq\":-1}",
            "{\"seq\":0}", "{\"seq\":true}", "{\"seq\":\"3\"}", "[1,2]", "{\"seq\":2}", "{\"seq\":2}", "{\"seq\":3", "{\"seq\":4}",
        ]
        try (lines.joined(separator: "\n") + "\n{\"seq\":5,\"to").write(toFile: d + "/alerts.jsonl", atomically: true, encoding: .utf8)
        let log = try AlertLog(directory: d, maxEntries: 100)
        #expect(log.count == 3)          // seq 1, 2, 4
        #expect(log.nextSequence == 5)
        #expect(log.recoveryNote?.contains("torn") == true)
        // The file was rewritten clean: every line parses, and the next append starts on its own line.
        try log.append(seq: 5, json: Array("{\"seq\":5}".utf8))
        let text = try String(contentsOfFile: d + "/alerts.jsonl", encoding: .utf8)
        #expect(text == "{\"seq\":1,\"status\":\"firing\"}\n{\"seq\":2}\n{\"seq\":4}\n{\"seq\":5}\n")
        #expect(AlertLog.decodeLine(Array("{\"seq\":9007199254740993}".utf8)[...]) == nil)
        #expect(AlertLog.decodeLine(Array("{\"seq\":9007199254740992}".utf8)[...]) == 1 << 53)
    }

    @Test func aFailedAppendIsCutBackAndNeverServed() throws {
        let d = tempDir()
        let log = try AlertLog(directory: d, maxEntries: 100)
        try log.append(seq: 1, json: Array("{\"seq\":1}".utf8))
        // A file-size limit just past the first line makes the next append fail part-way (EFBIG;
        // SIGXFSZ is ignored as the daemon does).
        signal(SIGXFSZ, SIG_IGN)
        var old = rlimit()
        getrlimit(Int32(RLIMIT_FSIZE.rawValue), &old)
        var lim = rlimit(rlim_cur: 16, rlim_max: old.rlim_max)
        setrlimit(Int32(RLIMIT_FSIZE.rawValue), &lim)
        #expect(throws: SaliencyError.self) { try log.append(seq: 2, json: Array("{\"seq\":2,\"pad\":\"xxxxxxxx\"}".utf8)) }
        setrlimit(Int32(RLIMIT_FSIZE.rawValue), &old)
        #expect(log.failures == 1)
        #expect(log.lastError != nil)
        #expect(log.entries(since: 0, limit: 10).0.count == 1, "an alert that is not on disk is never served")
        try log.append(seq: 3, json: Array("{\"seq\":3}".utf8))
        let text = try String(contentsOfFile: d + "/alerts.jsonl", encoding: .utf8)
        #expect(text == "{\"seq\":1}\n{\"seq\":3}\n", "no torn line under the next append")
        let reopened = try AlertLog(directory: d, maxEntries: 100)
        #expect(reopened.count == 2 && reopened.recoveryNote == nil)
    }

    @Test func aSnapshotWithAValidChecksumButAPhantomAlertIsRefused() throws {
        var h = try Harness(calibration: 100)
        h.sendSchema()
        for _ in 0..<110 { h.send(h.row()) }
        let e = try #require(h.engine)
        #expect(throws: Never.self) { _ = try SnapshotStore.decode(try SnapshotStore.encode(h.core), configuration: h.core.configuration) }
        let phantom = AlertMessage(seq: 1, status: .firing, labels: [:], annotations: [:], startsAt: "",
                                  model: "m", filter: 1_000_000, layer: "l0", channel: 0, score: nil, p: nil, threshold: nil,
                                  extreme_threshold: nil, exceedances: nil, window: nil, value: nil)
        h.core.alertLog.ensureSequence(atLeast: 5)
        for f in [1_000_000, -1, 3] {   // out of range, negative, in range but not firing in the tracker
            var a = phantom
            a.filter = f
            e.active = [f: a]
            do {
                _ = try SnapshotStore.decode(try SnapshotStore.encode(h.core), configuration: h.core.configuration)
                Issue.record("phantom alert on filter \(f) accepted")
            } catch let err as SaliencyError {
                #expect(err.code == .corruptState, "\(err)")
            }
        }
        e.active = [:]
    }

    @Test func modelsThatNeverAcceptedARowAreNotSnapshotted() throws {
        var h = try Harness(calibration: 100)
        h.sendSchema()
        h.feed([Topic.schema("junk"), Array("{\"model\":\"junk\",\"layers\":[{\"name\":\"a\",\"filters\":4}]}".utf8)])
        h.send(h.row())
        let r = try SnapshotStore.decode(try SnapshotStore.encode(h.core), configuration: h.core.configuration)
        #expect(r.engines.map(\.schema.model) == ["m"])
    }
}
