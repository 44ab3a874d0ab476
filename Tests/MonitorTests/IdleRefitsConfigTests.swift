import EVTOnline
import Foundation
import SaliencyCore
import Testing
@testable import SaliencyMonitor

/// `[pot] idle_refits`: parsed, checked, reported and reloadable; and why it exists: idle-time
/// refits between rows change what the core learns from the same rows (the soak test's flake),
/// while cores that refit only on the update path learn bit-identical state.
@Suite struct IdleRefitsConfigTests {
    @Test func keyIsParsedReportedAndReloadable() throws {
        #expect(DaemonConfiguration().idleRefits, "default: today's behaviour")
        let off = try DaemonConfiguration.parse(toml: "[pot]\nidle_refits = false\n")
        try off.validate()
        #expect(!off.idleRefits)
        #expect(off.effectiveSummary.contains("idle_refits = false"))
        #expect(DaemonConfiguration().effectiveSummary.contains("idle_refits = true"))
        #expect(off.warnings.isEmpty, "refits_per_row = 0.25 still refits")
        // A reload may change it (it only decides whether idle time is used), unlike other [pot] keys.
        #expect(off.restartRequired(comparedTo: DaemonConfiguration()).isEmpty)
        var both = off
        both.pot.maxPeaks = 128
        #expect(both.restartRequired(comparedTo: DaemonConfiguration()) == ["pot"])

        func err(_ toml: String) -> String {
            do { _ = try DaemonConfiguration.parse(toml: toml); return "" } catch { return error.message }
        }
        #expect(err("[pot]\nidle_refits = 0").contains("pot.idle_refits must be true or false"))
        #expect(err("[pot]\nidle_refits = \"no\"").contains("pot.idle_refits must be true or false"))
        #expect(err("[pot]\nidle_refit = false").contains("did you mean 'idle_refits'"))
        #expect(err("[engine]\nidle_refits = false").contains("unknown section [engine]"))
    }

    @Test func noRefitsAtAllGetsAdvice() throws {
        let never = try DaemonConfiguration.parse(toml: "[pot]\nidle_refits = false\nrefits_per_row = 0\n")
        try never.validate()
        #expect(never.warnings.count == 1)
        #expect(never.warnings.first?.contains("no filter is ever refit after calibration") == true)
        let idleOnly = try DaemonConfiguration.parse(toml: "[pot]\nrefits_per_row = 0\n")
        #expect(idleOnly.warnings.isEmpty)
    }

    @Test func reloadAppliesIt() throws {
        let h = try Harness()
        #expect(h.core.configuration.idleRefits)
        var c = h.core.configuration
        c.idleRefits = false
        #expect(c.restartRequired(comparedTo: h.core.configuration).isEmpty)
        h.core.apply(reloaded: c)
        #expect(!h.core.configuration.idleRefits)
        c.idleRefits = true
        h.core.apply(reloaded: c)
        #expect(h.core.configuration.idleRefits)
    }

    /// The cause, in-process: the same rows through three cores. Two refit only on the update path
    /// (one of them is asked the read-only `filter` query between rows) and end bit-identical;
    /// the third also runs `idleRefits` between rows, as EngineLoop does when the feed is quiet,
    /// and ends with other fits and other extreme counts: learned state that depends on timing.
    @Test func idleRefitsBetweenRowsChangeTheLearnedState() throws {
        func core() throws -> Harness {
            try Harness(seed: 3, calibration: 200, filters: [8, 12, 4]) { $0.pot.refitsPerRow = 0.02; $0.pot.refitAfterPeaks = 8 }
        }
        var a = try core(), b = try core(), idle = try core()
        var gen = try Harness(seed: 4)
        let rows: [[Float]] = (0..<1500).map { i in
            var r = gen.row()
            if i >= 400, i % 300 < 30 { r[5] *= 30; r[17] *= 30 }   // bursts: extremes, alerts, refits
            return r
        }
        for h in [a, b, idle] { h.sendSchema() }
        var idleRefits = 0
        for (i, r) in rows.enumerated() {
            a.send(r); b.send(r); idle.send(r)
            if i % 7 == 0 { idleRefits += idle.core.idleRefits(limit: 16) }
            if i % 50 == 0 { _ = b.query(#"{"op":"filter","model":"m","filter":5}"#) }
        }
        #expect(idleRefits > 0, "the idle core must have had due filters to refit")
        func state(_ h: Harness) -> [[String: String]] {
            (0..<24).map { j in
                let r = h.query(#"{"op":"filter","model":"m","filter":\#(j)}"#)
                return ["threshold", "extreme_threshold", "shape", "scale", "extremes", "peaks", "mean", "std", "peaks_since_fit"]
                    .reduce(into: [:]) { $0[$1] = "\(r[$1] ?? "nil")" }
            }
        }
        let sa = state(a), sb = state(b), si = state(idle)
        #expect(sa.allSatisfy { $0["extremes"] != "nil" && $0["shape"] != "nil" })
        #expect(sa == sb, "update-path refits only: identical state")
        #expect(a.engine?.refitCount == b.engine?.refitCount)
        #expect(sa != si, "idle refits between rows changed the learned state")
        #expect((idle.engine?.refitCount ?? 0) > (a.engine?.refitCount ?? 0))
    }
}
