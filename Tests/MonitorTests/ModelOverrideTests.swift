import EVTOnline
import Foundation
import Logging
import SaliencyCore
import SaliencyStream
import Testing
@testable import SaliencyMonitor

/// `[models.NAME]`: per-model `tails`, `transform`, `q` and `calibration` over `[pot]`
/// (docs/operations.md, "Per-model settings"): parsed and checked strictly, bounded, reported,
/// restart-only on reload, and used for the model's engine, admission cost, alert rule and
/// snapshot check.
@Suite struct ModelOverrideTests {
    func err(_ toml: String) -> String {
        do { try DaemonConfiguration.parse(toml: toml).validate(); return "" } catch { return error.message }
    }

    @Test func tablesOverrideOnlyTheirModel() throws {
        let c = try DaemonConfiguration.parse(toml: """
        [pot]
        tails = "upper"
        q = 1e-4
        [models.fmnist-cnn]
        tails = "both"
        transform = "layer-logres"
        [models."net:taylor"]
        q = 0.001
        calibration = 2000
        """)
        try c.validate()
        #expect(c.models.count == 2)
        let a = c.pot(for: "fmnist-cnn"), b = c.pot(for: "net:taylor"), other = c.pot(for: "net")
        #expect((a.tails, a.transform, a.q, a.calibration) == (.both, .layerLogres, 1e-4, 1000))
        #expect((b.tails, b.transform, b.q, b.calibration) == (.upper, RowTransformKind.none, 1e-3, 2000))
        #expect(other == c.pot)
        // Everything not in the table comes from [pot].
        #expect(a.level == c.pot.level && a.maxPeaks == c.pot.maxPeaks)
        // --check-config prints each model's effective settings and what its table sets.
        let summary = c.effectiveSummary
        #expect(summary.contains("[models.fmnist-cnn]  tails = both  transform = layer-logres  q = 0.0001  calibration = 1000  (set here: tails, transform;"))
        #expect(summary.contains("[models.\"net:taylor\"]  tails = upper  transform = none  q = 0.001  calibration = 2000  (set here: q, calibration;"))
        // An empty [models] table and a table that sets nothing are fine.
        let empty = try DaemonConfiguration.parse(toml: "[models]\n[models.x]\n")
        try empty.validate()
        #expect(empty.pot(for: "x") == empty.pot)
        #expect(DaemonConfiguration().models.isEmpty)
    }

    @Test func badTablesAreErrorsNamingTheKey() {
        for (toml, needle) in [
            ("[models.m]\ntail = \"both\"", "unknown key models.m.tail (did you mean 'tails'?)"),
            ("[models.m]\nlevel = 0.95", "unknown key models.m.level ([pot] level is one setting for all models"),
            ("[models.m]\ntails = \"two\"", "models.m.tails must be \"upper\", \"lower\" or \"both\", got \"two\""),
            ("[models.m]\ntransform = \"logres\"", "models.m.transform must be \"none\", \"layer-logres\" or \"layer-ratio\""),
            ("[models.m]\ntails = 2", "models.m.tails must be a string, got an integer"),
            ("[models.m]\nq = \"small\"", "models.m.q must be a number"),
            ("[models.m]\ncalibration = 1e3", "models.m.calibration must be an integer, got a float"),
            ("[models.\"a b\"]\ntails = \"both\"", "is not a model name"),
            ("[models.\"a.b\"]\ntails = \"both\"", "is not a model name"),
            ("[models.\"\"]\ntails = \"both\"", "is not a model name"),
            ("[models.\"é\"]\ntails = \"both\"", "is not a model name"),
            ("[models." + String(repeating: "x", count: 129) + "]\ntails = \"both\"", "is not a model name"),
            ("[models]\nm = \"both\"", "models.m must be a table"),
            ("[model.m]\ntails = \"both\"", "unknown table [model.m]"),
            ("[pot.m]\ntails = \"both\"", "unknown table [pot.m]"),
            // Values that parse but make no valid [pot] for that model: validate() names the table.
            ("[models.m]\nq = 0.5", "[models.m] (over [pot]): q must be in (0, 1 - level)"),
            ("[models.m]\ncalibration = 5", "[models.m] (over [pot]): calibration must be in 10...1000000"),
            ("[pot]\ndrift_window = 10\n[models.m]\ntails = \"both\"", "[models.m] (over [pot]): tails = \"both\" needs drift_window = 0"),
        ] {
            let e = err(toml)
            #expect(e.contains(needle), "\(toml.debugDescription) → \(e.isEmpty ? "accepted" : e)")
        }
        // The longest name (128 bytes) is fine.
        #expect(err("[models." + String(repeating: "x", count: 128) + "]\ntails = \"both\"") == "")
    }

    @Test func theNumberOfTablesIsBounded() throws {
        func file(_ n: Int) -> String { (0..<n).map { "[models.m\($0)]\ntails = \"both\"\n" }.joined() }
        let atLimit = try DaemonConfiguration.parse(toml: file(DaemonConfiguration.maxModelTables))
        try atLimit.validate()
        #expect(atLimit.models.count == DaemonConfiguration.maxModelTables)
        let over = err(file(DaemonConfiguration.maxModelTables + 1))
        #expect(over == "configuration: \(DaemonConfiguration.maxModelTables + 1) [models.NAME] tables; at most \(DaemonConfiguration.maxModelTables)", "one line, not one per table: \(over.prefix(300))")
        // Built in code (not from a file), validate() still holds the bound.
        var c = DaemonConfiguration()
        for i in 0...DaemonConfiguration.maxModelTables { c.models["m\(i)"] = .init(tails: .both) }
        #expect(throws: SaliencyError.self) { try c.validate() }
    }

    @Test func aChangedTableNeedsARestart() throws {
        let old = try DaemonConfiguration.parse(toml: "[models.a]\ntails = \"both\"\n[models.b]\nq = 1e-3\n")
        #expect(old.restartRequired(comparedTo: old).isEmpty)
        var c = old
        c.models["a"]!.tails = .lower
        #expect(c.restartRequired(comparedTo: old) == ["models.a"])
        c.models["b"] = nil
        c.models["new:one"] = .init(transform: .layerRatio)
        #expect(c.restartRequired(comparedTo: old) == ["models.a", "models.b", "models.\"new:one\""])
        var many = old
        for i in 0..<20 { many.models["x\(i)"] = .init(q: 1e-3) }
        #expect(many.restartRequired(comparedTo: old).count == 9 && many.restartRequired(comparedTo: old).last == "models (12 more)")
    }

    @Test func calibrationWarningsCoverModelTables() throws {
        let c = try DaemonConfiguration.parse(toml: "[models.m]\ncalibration = 100\n")
        try c.validate()
        #expect(c.warnings.contains { $0.hasPrefix("models.m.calibration × (1 − pot.level) = 10 peaks") }, "\(c.warnings)")
        #expect(c.warnings.contains { $0.hasPrefix("models.m.calibration = 100: each fold of the model-level cross-fit") }, "\(c.warnings)")
        #expect(DaemonConfiguration().warnings.isEmpty)
    }

    // MARK: - In the core

    /// A second model next to the Harness's "m", fed by hand.
    struct Second {
        let schema: ModelSchema
        var header: PredictionHeader
        init(_ name: String, filters: [Int]) throws {
            schema = try ModelSchema(model: name, layers: filters.enumerated().map { .init(name: "l\($0.offset)", filters: $0.element) })
            header = PredictionHeader(fingerprint: schema.fingerprint, producerID: 9, sequence: 0, timestampNanos: 0, predictedClass: 0, targetClass: 0, targetKind: .trueLabel)
        }
        mutating func send(_ row: [Float], _ h: Harness) {
            header.sequence += 1
            h.feed([Topic.prediction(schema.model), header.encoded(), row.withUnsafeBytes { Array($0) }])
        }
    }

    @Test func theEngineCostAndRuleUseTheModelsSettings() throws {
        var h = try Harness(calibration: 200, filters: [8, 12, 4]) { c in
            c.models["m"] = .init(tails: .both, transform: .layerLogres, q: 1e-3, calibration: 300)
        }
        defer { try? FileManager.default.removeItem(atPath: h.dir) }
        var other = try Second("other", filters: [8, 12, 4])
        h.sendSchema()
        h.feed([Topic.schema("other"), SchemaMessage.encode(other.schema)])
        let m = try #require(h.engine), o = try #require(h.core.engines[other.schema.fingerprint])
        #expect(m.configuration == h.core.configuration.pot(for: "m"))
        #expect((m.configuration.tails, m.configuration.transform, m.configuration.q, m.configuration.calibration) == (.both, .layerLogres, 1e-3, 300))
        #expect(o.configuration == h.core.configuration.pot)
        #expect(m.trackerSlots == 48 && o.trackerSlots == 24)
        // Admission charges each model its own cost (both tails, a transform and more calibration rows cost more).
        #expect(ModelEngine.maximumBytes(schema: h.schema, configuration: h.core.configuration) == m.maximumBytes)
        #expect(ModelEngine.maximumBytes(schema: other.schema, configuration: h.core.configuration) == o.maximumBytes)
        #expect(m.maximumBytes > o.maximumBytes)
        #expect(h.core.admittedBytes == m.maximumBytes + o.maximumBytes)
        // Each rule is designed from the model's own q (same K, other q: another design).
        let c = h.core.configuration
        let designed = { (q: Double) in try AlertRule.design(filters: 24, q: q, budget: c.alerting, safetyFactor: c.alertSafetyFactor, model: c.modelShiftRule) }
        #expect(m.tracker.rule == (try designed(1e-3)))
        #expect(o.tracker.rule == (try designed(1e-4)))
        #expect(m.tracker.rule != o.tracker.rule)
        // status shows the effective settings per model, and each model's own calibration.
        let status = h.query(#"{"op":"status"}"#)
        let models = try #require(status["models"] as? [[String: Any]])
        let byName = Dictionary(uniqueKeysWithValues: models.map { ($0["model"] as! String, $0) })
        #expect(byName["m"]?["tails"] as? String == "both" && byName["m"]?["transform"] as? String == "layer-logres" && byName["m"]?["q"] as? Double == 1e-3)
        #expect(byName["other"]?["tails"] as? String == "upper" && byName["other"]?["transform"] as? String == "none" && byName["other"]?["q"] as? Double == 1e-4)
        #expect(byName["m"]?["calibration_total"] as? Int == 300 && byName["other"]?["calibration_total"] as? Int == 200)
        for _ in 0..<300 { h.send(h.row()); other.send(h.row(), h) }
        #expect(m.isCalibrated && o.isCalibrated)
        let after = try #require(h.query(#"{"op":"status"}"#)["models"] as? [[String: Any]])
        let totals = Dictionary(uniqueKeysWithValues: after.map { ($0["model"] as! String, ($0["calibration_seen"] as! Int, $0["calibration_total"] as! Int)) })
        #expect(totals["m"]! == (300, 300) && totals["other"]! == (200, 200))
    }

    /// A snapshot restored under other settings for one model: that model alone is refused (the
    /// daemon's start-up mode), or the whole decode fails naming the model (strict: inspection).
    @Test func aSnapshotIsCheckedAgainstEachModelsSettings() throws {
        var h = try Harness(calibration: 200, filters: [8, 12, 4]) { c in c.models["m"] = .init(tails: .both) }
        defer { try? FileManager.default.removeItem(atPath: h.dir) }
        var other = try Second("other", filters: [5, 5])
        h.sendSchema()
        h.feed([Topic.schema("other"), SchemaMessage.encode(other.schema)])
        for _ in 0..<250 { h.send(h.row()); other.send((0..<10).map { _ in Float(exp(0.5 * h.rng.normal())) }, h) }
        let bytes = try SnapshotStore.encode(h.core)
        // Same settings: both come back.
        let same = try SnapshotStore.decode(bytes, configuration: h.core.configuration, refuseMismatchedModels: true)
        #expect(same.engines.map(\.schema.model).sorted() == ["m", "other"] && same.refused.isEmpty)
        #expect(same.engines.first { $0.schema.model == "m" }?.configuration.tails == .both)
        // The table removed: "m" was learned with both tails, its settings now say upper.
        var changed = h.core.configuration
        changed.models = [:]
        do {
            _ = try SnapshotStore.decode(bytes, configuration: changed)
            Issue.record("strict decode accepted a model learned with other settings")
        } catch {
            #expect(error.message.contains("model 'm' (settings: [pot])") && error.message.contains("tails = both") && error.message.contains("tails = upper"), "\(error.message)")
        }
        let partial = try SnapshotStore.decode(bytes, configuration: changed, refuseMismatchedModels: true)
        #expect(partial.engines.map(\.schema.model) == ["other"])
        #expect(partial.refused.map(\.model) == ["m"] && partial.refused[0].reason.contains("tails = both") && partial.refused[0].settings == "[pot]")
        // A table that changes another model's transform: that one is refused, naming its table.
        var other2 = h.core.configuration
        other2.models["other"] = .init(transform: .layerRatio)
        let p2 = try SnapshotStore.decode(bytes, configuration: other2, refuseMismatchedModels: true)
        #expect(p2.engines.map(\.schema.model) == ["m"] && p2.refused.map(\.model) == ["other"])
        #expect(p2.refused[0].settings == "[models.other] over [pot]" && p2.refused[0].reason.contains("pot.transform = \"layer-ratio\""))
        // Corruption is still fatal for the whole file in either mode.
        var bad = bytes
        bad[bad.count / 2] ^= 0x40
        #expect(throws: SaliencyError.self) { try SnapshotStore.decode(bad, configuration: changed, refuseMismatchedModels: true) }

        // The store: the refused model's state is left out, the other restored, the file copied aside.
        var logger = Logger(label: "t")
        logger.logLevel = .critical
        let store = SnapshotStore(directory: h.dir, logger: logger)
        guard case .success? = store.write(h.core, wait: true) else { Issue.record("write failed"); return }
        let core2 = DaemonCore(configuration: changed, alertLog: try AlertLog(directory: h.dir, maxEntries: 1000), logger: logger, metrics: DaemonMetrics())
        store.restore(into: core2)
        #expect(core2.engines.values.map(\.schema.model) == ["other"])
        #expect(core2.byName["m"] == nil && core2.byName["other"] == other.schema.fingerprint)
        let files = try FileManager.default.contentsOfDirectory(atPath: h.dir)
        #expect(files.contains("snapshot.bin") && files.filter { $0.hasPrefix("snapshot.bin.refused-") }.count == 1 && !files.contains { $0.contains(".rejected-") }, "\(files)")
        // "m" registers again under its new settings and calibrates from zero.
        SchemaMessage.encode(h.schema).withUnsafeBytes { core2.handleSchema(model: "m", $0) }
        let fresh = try #require(core2.engines[h.schema.fingerprint])
        #expect(fresh.configuration.tails == .upper && fresh.rows == 0 && !fresh.isCalibrated)
    }
}
