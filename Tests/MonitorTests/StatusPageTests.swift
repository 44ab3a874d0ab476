import Foundation
import SaliencyCore
import SaliencyStream
import Synchronization
import Testing
@testable import SaliencyMonitor

/// The status page's pure parts (StatusPage.swift) and its engine-side answers (StatusPageData.swift).
@Suite struct StatusPageTests {
    static let hostile = "<script>alert(\"x\")</script>&'q'"

    static func model(_ name: String, phase: String = "monitoring", firing: Int = 0) -> StatusReply.Model {
        StatusReply.Model(model: name, fingerprint: "00ff", filters: 10, layers: 2, phase: phase, calibration_seen: 40, calibration_total: 200,
                          rows: 300, rows_since_start: 300, rate_per_s: 12.5, firing: firing, model_alert: false, refits: 3, due: 0,
                          alert_rule: .init(window: 10, fire_count: 3, resolve_below: 1), rejected_rows: [:], extremes_by_layer: [:],
                          extremes_other_layers: 0, max_bytes: 1000, peak_stride: 1, max_refit_lag_rows: nil)
    }

    static func status(_ models: [StatusReply.Model]) -> StatusReply {
        StatusReply(version: "0.1.0", uptime_s: 12, models: models, rejected: [:], gaps: 0, producers: [], firing: 0, alert_seq: 0, queries: 0,
                    state_directory: "/tmp/x", last_snapshot: nil, kernels: "generic", alert_latency_us: [:], producer_count: 0,
                    limits: .init(admitted_bytes: 0, max_total_bytes: 0, max_model_bytes: 0, max_models: 0, max_layers: 0, max_producers: 0),
                    persistence: .init(alert_log_failures: 0, alert_log_error: nil, snapshot_failures: 0, snapshot_error: nil),
                    log_suppressed: 0, models_expired: 0)
    }

    static func alert(model: String, layer: String, filter: Int?) -> AlertMessage {
        AlertMessage(seq: 7, status: .firing, labels: ["model": model], annotations: [:], startsAt: "2026-01-01T00:00:00Z", model: model,
                     filter: filter, layer: layer, channel: filter.map { _ in 1 }, score: 9.5, p: 3e-10, threshold: 2, extreme_threshold: 5,
                     exceedances: 4, window: 10, value: 12)
    }

    /// No raw `<script` may appear anywhere in a page; the hostile text must appear escaped.
    static func assertEscaped(_ html: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(!html.contains("<script"), sourceLocation: sourceLocation)
        #expect(!html.contains("\"x\")"), sourceLocation: sourceLocation)
        #expect(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;q&#39;"), sourceLocation: sourceLocation)
    }

    @Test func escapeHandlesMarkupQuotesAmpersandsAndControls() {
        #expect(StatusPage.escape(Self.hostile) == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;q&#39;")
        #expect(StatusPage.escape("a\u{0}b\u{1b}c\u{85}d") == "a\u{FFFD}b\u{FFFD}c\u{FFFD}d")
        #expect(StatusPage.escape("Ünïcode ✓") == "Ünïcode ✓")
        #expect(StatusPage.escape("&amp;") == "&amp;amp;")
    }

    @Test func percentEncodingRoundTripsAndIsAttributeSafe() {
        for s in [Self.hostile, "a/b c%d?e#f", "résnet-50", "", "~._-"] {
            let e = StatusPage.percentEncode(s)
            #expect(e.allSatisfy { $0.isLetter && $0.isASCII || $0.isNumber || "%-._~".contains($0) })
            #expect(StatusPage.percentDecode(Substring(e)) == s)
        }
        #expect(StatusPage.modelPath("a/b") == "/model/a%2Fb")
        #expect(StatusPage.filterPath("m x", 12) == "/filter/m%20x/12")
    }

    @Test func percentDecodingRejectsMalformedEscapesAndInvalidUTF8() {
        #expect(StatusPage.percentDecode("%zz") == nil)
        #expect(StatusPage.percentDecode("abc%") == nil)
        #expect(StatusPage.percentDecode("abc%4") == nil)
        #expect(StatusPage.percentDecode("%4g") == nil)
        #expect(StatusPage.percentDecode("%ff%fe") == nil)           // not UTF-8
        #expect(StatusPage.percentDecode("%C3%A9t%c3%a9") == "été")  // either hex case
        #expect(StatusPage.percentDecode("a+b") == "a+b")            // no form decoding in paths
    }

    /// The Alertmanager forwarder's `generatorURL`s are exactly these pages' paths, and route back.
    @Test func generatorURLsRouteToThePages() {
        for name in [Self.hostile, "resnet-50", "a/b%c"] {
            let f = PostableAlert.generatorURL(base: "http://h:9464", model: name, filter: 12)
            let m = PostableAlert.generatorURL(base: "http://h:9464", model: name, filter: nil)
            #expect(f == "http://h:9464" + StatusPage.filterPath(name, 12))
            #expect(m == "http://h:9464" + StatusPage.modelPath(name))
            #expect(StatusPage.route(method: "GET", uri: String(f.dropFirst("http://h:9464".count))) == .page(.filter(model: name, index: 12)))
            #expect(StatusPage.route(method: "GET", uri: String(m.dropFirst("http://h:9464".count))) == .page(.model(name)))
        }
    }

    @Test func deliveryLine() {
        var d = DeliveryStats.Snapshot()
        d.enabled = true
        var t = DeliveryStats.Target(url: "http://am:9093")
        t.sent = 5; t.failed = 2; t.up = true
        d.targets = [t, DeliveryStats.Target(url: "http://other")]
        d.dropped = 1; d.queued = 3; d.capacity = 100
        let html = StatusPage.overview(OverviewPage(status: Self.status([]), firing: [], firingTotal: 0, heatMaps: [:]), delivery: d)
        #expect(html.contains("Alertmanager delivery: 1/2 up · 5 sent · 2 failed · 1 dropped · queue 3/100"))
        d.enabled = false
        #expect(!StatusPage.overview(OverviewPage(status: Self.status([]), firing: [], firingTotal: 0, heatMaps: [:]), delivery: d).contains("Alertmanager delivery"))
    }

    @Test func routing() {
        typealias R = StatusPage.Route
        #expect(StatusPage.route(method: "GET", uri: "/") == .page(.overview))
        #expect(StatusPage.route(method: "GET", uri: "/?x=1") == .page(.overview))
        #expect(StatusPage.route(method: "HEAD", uri: "/metrics") == .metrics)
        #expect(StatusPage.route(method: "GET", uri: "/metrics?name[]=x") == .metrics)
        #expect(StatusPage.route(method: "POST", uri: "/metrics") == .methodNotAllowed)
        #expect(StatusPage.route(method: "DELETE", uri: "/") == .methodNotAllowed)
        #expect(StatusPage.route(method: "GET", uri: "/model/a%2Fb") == .page(.model("a/b")))
        #expect(StatusPage.route(method: "GET", uri: "/filter/m%3Cx%3E/42") == .page(.filter(model: "m<x>", index: 42)))
        if case .badRequest = StatusPage.route(method: "GET", uri: "/model/%zz") {} else { Issue.record("malformed %zz must be 400") }
        if case .badRequest = StatusPage.route(method: "GET", uri: "/filter/m/-1") {} else { Issue.record("negative index must be 400") }
        if case .badRequest = StatusPage.route(method: "GET", uri: "/filter/m/99999999999999999999") {} else { Issue.record("huge index must be 400") }
        if case .badRequest = StatusPage.route(method: "GET", uri: "/filter/m/１") {} else { Issue.record("non-ASCII digits must be 400") }
        if case .notFound = StatusPage.route(method: "GET", uri: "/model/") {} else { Issue.record("/model/ must be 404") }
        if case .notFound = StatusPage.route(method: "GET", uri: "/model/a/b") {} else { Issue.record("/model/a/b must be 404") }
        if case .notFound = StatusPage.route(method: "GET", uri: "/favicon.ico") {} else { Issue.record("unknown path must be 404") }
        #expect(StatusPage.route(method: "GET", uri: "/" + String(repeating: "a", count: 5000)) == .uriTooLong)
    }

    @Test func heatMapBinsWideLayersToTheMaxPerBin() {
        // Layer a: 5 filters (≤ maxCells: one cell each); layer b: 10 filters → 4 bins of 2 or 3.
        var scores = (0..<15).map { Double($0) / 10 }
        scores[5 + 7] = 42                                     // b's filter 7 → global 12
        let hm = HeatMap.build(layers: [("a", 5), ("b", 10)], scores: scores, maxLayers: 10, maxCells: 4)
        #expect(hm.rows.count == 2 && hm.layersOmitted == 0)
        #expect(hm.rows[0].cells.count == 4 && hm.rows[0].binned)
        #expect(hm.rows[1].cells.map(\.count) == [2, 3, 2, 3])
        #expect(hm.rows[1].cells.map(\.first) == [5, 7, 10, 12])
        #expect(hm.rows[1].cells.reduce(0) { $0 + $1.count } == 10)
        #expect(hm.rows[1].cells[3].score == 42 && hm.rows[1].cells[3].argmax == 12)
        #expect(hm.rows[1].cells[0].score == scores[6] && hm.rows[1].cells[0].argmax == 6)
        let narrow = HeatMap.build(layers: [("a", 5)], scores: Array(scores.prefix(5)), maxLayers: 10, maxCells: 64)
        #expect(!narrow.binned && narrow.rows[0].cells.map(\.argmax) == [0, 1, 2, 3, 4])
        // Infinity (p = 0) wins its bin; NaN never does.
        let odd = HeatMap.bin([.nan, 1, .infinity, 2], offset: 0, maxCells: 2)
        #expect(odd.map(\.score) == [1, .infinity])
        // Extremes mark the cell holding them (binned or not).
        let marked = HeatMap.build(layers: [("a", 5), ("b", 10)], scores: scores, extremes: [14, 1, 6, 12], maxLayers: 10, maxCells: 4)
        #expect(marked.rows[0].cells.map(\.extremes) == [0, 1, 0, 0])   // bins 0, 1, 2, 3–4
        #expect(marked.rows[1].cells.map(\.extremes) == [1, 0, 0, 2])
        #expect(StatusPage.heatMapSVG(marked, model: "m", links: false).components(separatedBy: "class=\"x\"").count - 1 == 3)
        // Layer cap.
        let many = HeatMap.build(layers: (0..<10).map { ("l\($0)", 1) }, scores: Array(repeating: 0, count: 10), maxLayers: 3, maxCells: 4)
        #expect(many.rows.count == 3 && many.layersOmitted == 7)
    }

    @Test func heatMapSVGHasOneRowPerLayerAndEscapesLayerNames() {
        let hm = HeatMap.build(layers: [(Self.hostile, 300), ("conv2", 3)], scores: (0..<303).map { Double($0 % 9) }, maxLayers: 10, maxCells: 96)
        let svg = StatusPage.heatMapSection(hm, model: Self.hostile, links: true)
        #expect(svg.components(separatedBy: "<g class=\"hm-row\"").count - 1 == 2)
        #expect(svg.components(separatedBy: "<rect ").count - 1 >= 96 + 3)
        #expect(svg.contains("binned to 96 cells"))
        #expect(svg.contains("href=\"/filter/%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E%26%27q%27/"))
        #expect(!svg.contains("<script"))
    }

    @Test func colourScaleIsMonotoneAndClamped() {
        #expect(StatusPage.colour(score: 0) == "#f4f4f2")
        #expect(StatusPage.colour(score: -3) == StatusPage.colour(score: 0))
        #expect(StatusPage.colour(score: .infinity) == "#67000d")
        #expect(StatusPage.colour(score: 100) == "#67000d")
        #expect(StatusPage.colour(score: .nan) == StatusPage.colour(score: 0))
        #expect(StatusPage.colour(score: 4) != StatusPage.colour(score: 5))
    }

    @Test func durations() {
        #expect(StatusPage.duration(0.4) == "0 s")
        #expect(StatusPage.duration(185) == "3 min 5 s")
        #expect(StatusPage.duration(7800) == "2 h 10 min")
        #expect(StatusPage.duration(356_400) == "4 d 3 h")
        #expect(StatusPage.duration(.nan) == "?")
    }

    @Test func emptyDaemonOverview() {
        let html = StatusPage.overview(OverviewPage(status: Self.status([]), firing: [], firingTotal: 0, heatMaps: [:]))
        #expect(html.hasPrefix("<!DOCTYPE html>"))
        #expect(html.contains("No model yet"))
        #expect(html.contains("No firing alerts."))
        #expect(html.contains("http-equiv=\"refresh\""))
        #expect(!html.contains("<svg class=\"heatmap\""))
    }

    @Test func hostileNamesAreEscapedOnEveryPage() {
        let m = Self.model(Self.hostile, firing: 1)
        let hm = HeatMap.build(layers: [(Self.hostile, 4)], scores: [1, 2, 3, 9], maxLayers: 4, maxCells: 8)
        let a = Self.alert(model: Self.hostile, layer: Self.hostile, filter: 3)
        let overview = StatusPage.overview(OverviewPage(status: Self.status([m]), firing: [a], firingTotal: 1, heatMaps: [Self.hostile: hm]))
        Self.assertEscaped(overview)
        let top = TopReply(model: Self.hostile, by: "pot", window: 1, top: [.init(filter: 3, layer: Self.hostile, channel: 3, score: 9, p: 1e-9)])
        let model = StatusPage.model(ModelPage(model: m, heatMap: hm, topPOT: top, topZ: nil, topNote: nil, firing: [a], firingTotal: 1))
        Self.assertEscaped(model)
        let f = FilterReply(model: Self.hostile, filter: 3, layer: Self.hostile, channel: 3, tail: "gpd", threshold: 2, extreme_threshold: 5,
                            shape: 0.1, scale: 1, n: 300, peaks: 30, peaks_in_ring: 30, peaks_since_fit: 0, due: false, extremes: 2,
                            mean: 1, std: 0.5, firing: true, window_exceedances: 4, recent: [])
        let filter = StatusPage.filter(FilterPage(filter: f, history: [.init(value: 1, score: 0.3, p: 0.5, zscore: 0), .init(value: 12, score: 9, p: 1e-9, zscore: 20)], phase: "monitoring"))
        Self.assertEscaped(filter)
        #expect(filter.contains("<svg class=\"spark-value\""))
        #expect(filter.contains("FIRING"))
        // Two-tailed models: the lower tail and the direction are shown.
        var two = f
        two.lower = .init(tail: "gpd", threshold: 0.2, extreme_threshold: 0.05, shape: 0, scale: 0.1, n: 300, peaks: 30, extremes: 1,
                          zero_mode: "none", calibration_zeros: 0, zeros: 0, zero_run: 0, zero_run_threshold: nil, firing: true, window_exceedances: 3)
        let twoPage = StatusPage.filter(FilterPage(filter: two, history: [], phase: "monitoring"))
        #expect(twoPage.contains("<h2>Lower tail <span class=\"firing\">FIRING</span></h2>") && twoPage.contains("data-key=\"lower extreme threshold\">0.05<"))
        let lowerTop = TopReply(model: "m", by: "pot", window: 1, top: [.init(filter: 3, layer: "l", channel: 3, score: 9, p: 1e-9, direction: "lower")])
        #expect(StatusPage.topTable(lowerTop, model: "m").contains("<td>lower</td>"))
        Self.assertEscaped(StatusPage.error(status: 404, title: "Not Found", detail: "no model '\(Self.hostile)'", path: "/model/" + Self.hostile))
    }

    @Test func boundsCapModelsAlertsAndSize() {
        let models = (0..<(StatusPage.maxModels + 5)).map { Self.model("m\($0)") }
        let alerts = (0..<StatusPage.maxAlerts).map { Self.alert(model: "m\($0)", layer: "l", filter: $0) }
        // Worst case overview: every heat map full (overviewLayers × overviewCells), long names.
        let long = String(repeating: "n", count: 5000)
        let hm = HeatMap.build(layers: (0..<100).map { ("\(long)\($0)", 10_000) }, scores: Array(repeating: 3, count: 1_000_000),
                               maxLayers: StatusPage.overviewLayers, maxCells: StatusPage.overviewCells)
        var maps: [String: HeatMap] = [:]
        for i in 0..<StatusPage.overviewHeatMaps { maps["m\(i)"] = hm }
        let html = StatusPage.overview(OverviewPage(status: Self.status(models), firing: alerts, firingTotal: 500, heatMaps: maps))
        #expect(html.contains("… 5 more models"))
        #expect(html.contains("… 400 more firing alerts"))
        #expect(html.contains("… 84 more layers"))
        #expect(!html.contains(long))                      // names are shortened
        #expect(html.utf8.count < 1_000_000, "overview is \(html.utf8.count) bytes")
        print("status page worst case: overview \(html.utf8.count) bytes")
        let big = HeatMap.build(layers: (0..<100).map { ("\(long)\($0)", 10_000) }, scores: Array(repeating: 3, count: 1_000_000),
                                maxLayers: StatusPage.modelLayers, maxCells: StatusPage.modelCells)
        let page = StatusPage.model(ModelPage(model: Self.model("m"), heatMap: big, topPOT: nil, topZ: nil, topNote: nil, firing: alerts, firingTotal: 100))
        #expect(page.utf8.count < 1_000_000, "model page is \(page.utf8.count) bytes")
        print("status page worst case: model page \(page.utf8.count) bytes")
    }

    // MARK: Engine side

    @Test func engineAnswersFollowTheModelLifecycle() throws {
        var h = try Harness(calibration: 200, filters: [8, 12, 4])
        #expect({ if case .notFound(let why) = h.core.statusPage(.model("m"), lastSnapshot: nil) { why.contains("no model 'm'") } else { false } }())
        guard case .overview(let empty) = h.core.statusPage(.overview, lastSnapshot: nil) else { Issue.record("overview"); return }
        #expect(empty.status.models.isEmpty && empty.heatMaps.isEmpty)
        h.sendSchema()
        for _ in 0..<50 { h.send(h.row()) }
        guard case .model(let calibrating) = h.core.statusPage(.model("m"), lastSnapshot: nil) else { Issue.record("model"); return }
        #expect(calibrating.heatMap == nil && calibrating.topPOT == nil && calibrating.topNote?.contains("calibrating") == true)
        for _ in 0..<200 { h.send(h.row()) }
        var spike = h.row()
        spike[13] *= 1000
        h.send(spike)
        guard case .model(let page) = h.core.statusPage(.model("m"), lastSnapshot: nil), let hm = page.heatMap else { Issue.record("model heat map"); return }
        #expect(hm.rows.map(\.layer) == ["l0", "l1", "l2"])
        #expect(hm.rows.map(\.filters) == [8, 12, 4])
        let hottest = hm.rows.flatMap(\.cells).max { $0.score < $1.score }!
        #expect(hottest.argmax == 13)
        #expect(page.topPOT?.top.first?.filter == 13)
        #expect(page.topZ?.top.count == StatusPage.topK)
        guard case .filter(let f) = h.core.statusPage(.filter(model: "m", index: 13), lastSnapshot: nil) else { Issue.record("filter"); return }
        #expect(f.filter.filter == 13 && f.filter.layer == "l1" && f.filter.channel == 5)
        #expect(f.history.count == 32 && f.history.last!.value == Double(spike[13]))   // monitor.recent_rows = 32, oldest first
        if case .notFound(let why) = h.core.statusPage(.filter(model: "m", index: 24), lastSnapshot: nil) { #expect(why.contains("out of range")) } else { Issue.record("index 24 must be not found") }
        guard case .overview(let o) = h.core.statusPage(.overview, lastSnapshot: nil) else { Issue.record("overview"); return }
        #expect(o.heatMaps["m"]?.rows.count == 3)
    }

    // Time limit, not a clock bound: resuming the awaiting task needs a cooperative thread, and in
    // this test process other suites hold both of a 2-core machine's for up to ~50 s (measured in
    // CI), so only "never" is a failure here.
    @Test(.timeLimit(.minutes(2))) func mailboxIsBoundedOneShotAndClosable() async {
        let box = StatusMailbox(capacity: 2)
        let answers = Mutex<[String]>([])
        func ticket(_ tag: String) -> StatusMailbox.Ticket {
            StatusMailbox.Ticket(.overview) { o in answers.withLock { $0.append("\(tag):\(o)") } }
        }
        #expect(box.submit(ticket("a")) == nil)
        #expect(box.submit(ticket("b")) == nil)
        if case .busy = box.submit(ticket("c")) {} else { Issue.record("a full mailbox must refuse") }
        let taken = box.take(limit: 1)
        #expect(taken.count == 1 && box.waiting == 1)
        taken[0].complete(.timeout)
        taken[0].complete(.stopped)                   // one-shot: ignored
        #expect(taken[0].isDone)
        box.close()
        if case .stopped = box.submit(ticket("d")) {} else { Issue.record("a closed mailbox must refuse") }
        let got = answers.withLock { $0 }
        #expect(got.count == 2 && got[0].hasPrefix("a:timeout") && got[1].hasPrefix("b:stopped"))
        // Nobody serves the mailbox: ask returns .timeout after the timeout, not never.
        let idle = StatusMailbox()
        if case .timeout = await idle.ask(.overview, timeout: .milliseconds(200)) {} else { Issue.record("expected a timeout") }
        // Served by another thread (as the engine does): the answer arrives, well before the timeout.
        let served = StatusMailbox()
        let engine = Thread {
            for _ in 0..<200 {
                if let t = served.take(limit: 1).first { t.complete(.answer(.notFound("served \(t.request)"))); return }
                usleep(5000)
            }
        }
        engine.start()
        let t0 = ContinuousClock.now
        if case .answer(.notFound(let why)) = await served.ask(.model("x"), timeout: .seconds(5)) { #expect(why == "served model(\"x\")") } else { Issue.record("expected the served answer") }
        #expect(ContinuousClock.now - t0 < .seconds(2))
    }
}
