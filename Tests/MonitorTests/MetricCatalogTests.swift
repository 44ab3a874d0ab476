import Foundation
import Prometheus
import Testing
@testable import SaliencyMonitor

/// The metric table (MetricCatalog) follows Prometheus naming conventions, and DaemonMetrics
/// creates every known series at 0 when a model is admitted and removes them when it is forgotten.
@Suite struct MetricCatalogTests {
    @Test func namesFollowPrometheusConventions() {
        var seen = Set<String>()
        for f in MetricCatalog.all {
            #expect(seen.insert(f.name).inserted, "\(f.name) twice")
            #expect(f.name.range(of: "^[a-z_][a-z0-9_]*$", options: .regularExpression) != nil, "\(f.name)")
            #expect(f.name.hasPrefix("saliencyd_") || f.name.hasPrefix("process_"), "\(f.name)")
            #expect((f.kind == .counter) == f.name.hasSuffix("_total"), "\(f.name): _total iff counter")
            #expect(!f.help.isEmpty, "\(f.name): no help")
            #expect(!f.labels.contains("filter"), "\(f.name): never a series per filter")
            for unit in ["_milliseconds", "_microseconds", "_kilobytes", "_megabytes", "_ms"] { #expect(!f.name.contains(unit), "\(f.name): base units") }
        }
        #expect(seen.count == MetricCatalog.all.count)
        let le = MetricCatalog.rowLatencyBuckets
        #expect(le.first == .nanoseconds(500) && le.last == .milliseconds(100) && le.count == 17)
        #expect(zip(le, le.dropFirst()).allSatisfy { $0 < $1 })
    }

    @Test func everyCatalogFamilyIsDocumented() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let doc = try String(contentsOf: root.appendingPathComponent("docs/operations.md"), encoding: .utf8)
        for f in MetricCatalog.all {
            #expect(doc.contains("| `\(f.name)` | \(f.kind.rawValue) |"), "\(f.name) missing from docs/operations.md \"Prometheus\"")
        }
    }

    @Test func modelSeriesExistAtZeroFromAdmissionAndGoWhenForgotten() throws {
        var h = try Harness()
        let r = h.core.metrics.registry
        var text = r.emitToString()
        #expect(text.contains("# HELP saliencyd_rejected_total "))
        #expect(text.contains("saliencyd_rejected_total{reason=\"wrong_width\"} 0"))
        #expect(!text.contains("model=\"m\""))
        h.sendSchema()
        #expect(h.core.engines.count == 1, "schema refused: \(h.core.rejected)")
        text = r.emitToString()
        for line in ["saliencyd_predictions_total{model=\"m\"} 0", "saliencyd_sequence_gaps_total{model=\"m\"} 0",
                     "saliencyd_alerts_total{model=\"m\",status=\"firing\"} 0", "saliencyd_alerts_total{model=\"m\",status=\"resolved\"} 0",
                     "saliencyd_layer_extreme_exceedances_total{model=\"m\",layer=\"l2\",direction=\"upper\"} 0", "saliencyd_layer_firing_alerts{model=\"m\",layer=\"l0\"} 0.0",
                     "saliencyd_model_shift_firing{model=\"m\"} 0.0", "saliencyd_calibrated_ratio{model=\"m\"} 0.0"] {
            #expect(text.contains(line), "\(line)")
        }
        for _ in 0..<260 { h.send(h.row()) }
        text = r.emitToString()
        #expect(text.contains("saliencyd_predictions_total{model=\"m\"} 260"))
        #expect(text.contains("saliencyd_calibrated_ratio{model=\"m\"} 1.0"))
        #expect(text.contains("saliencyd_row_processing_seconds_count 260"))
        h.core.remove(h.schema.fingerprint)
        text = r.emitToString()
        #expect(!text.contains("model=\"m\""))
    }
}
