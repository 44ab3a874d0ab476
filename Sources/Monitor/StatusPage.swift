import Foundation
import SaliencyStream

// The status page on the metrics port (docs/status-page.md): pure functions from typed replies to
// HTML + inline SVG. No sockets, no engine state: everything here is unit-testable
// (Tests/MonitorTests/StatusPageTests.swift). Every string that a producer controls (model, layer
// names) goes through `escape` before it reaches the page, and through `percentEncode` before it
// reaches a URL.

// MARK: - What the engine hands over

/// What the HTTP side asks the engine for (through `StatusMailbox`).
enum StatusPageRequest: Sendable, Equatable {
    case overview
    case model(String)
    case filter(model: String, index: Int)
}

/// A per-layer heat map of one prediction's POT scores: one row per layer, one cell per filter,
/// or, for a layer wider than `maxCells`, one cell per bin of consecutive filters holding the
/// bin's highest score (and which filter had it).
struct HeatMap: Sendable, Equatable {
    struct Cell: Sendable, Equatable {
        /// Global index of the bin's first filter, and how many filters it covers.
        var first: Int
        var count: Int
        /// The bin's highest score (−log10 p) and the global index of the filter that has it.
        var score: Double
        var argmax: Int
        /// Filters of the bin above their extreme threshold in this prediction.
        var extremes = 0
    }
    struct Row: Sendable, Equatable {
        var layer: String
        /// Global index of the layer's first filter, and its width.
        var offset: Int
        var filters: Int
        var cells: [Cell]
        var binned: Bool { cells.count < filters }
    }
    var rows: [Row]
    /// Layers not drawn (beyond `maxLayers`).
    var layersOmitted: Int
    var maxCells: Int
    var binned: Bool { rows.contains(where: \.binned) }

    /// Splits `scores` (all K filters, schema order) by `layers` and bins each layer to at most
    /// `maxCells` cells (max per bin). Draws at most `maxLayers` layers, in schema order.
    /// `extremes`: global indices of the filters above their extreme threshold (outlined).
    static func build(layers: [(name: String, filters: Int)], scores: [Double], extremes: [Int] = [], maxLayers: Int, maxCells: Int) -> HeatMap {
        precondition(maxCells > 0 && maxLayers >= 0)
        var rows: [Row] = []
        var offset = 0
        let extremes = extremes.sorted()
        var xi = 0   // next extreme to place (both walk the filters in order)
        for (i, l) in layers.enumerated() {
            defer { offset += l.filters }
            guard i < maxLayers else { continue }
            guard offset + l.filters <= scores.count else { break }
            var cells = bin(scores[offset..<offset + l.filters], offset: offset, maxCells: maxCells)
            // Mark extremes: cells are consecutive ranges, so a binary search finds each one's cell.
            while xi < extremes.count && extremes[xi] < offset { xi += 1 }
            while xi < extremes.count && extremes[xi] < offset + l.filters {
                let j = extremes[xi]
                var lo = 0, hi = cells.count - 1
                while lo < hi { let mid = (lo + hi + 1) / 2; if cells[mid].first <= j { lo = mid } else { hi = mid - 1 } }
                cells[lo].extremes += 1
                xi += 1
            }
            rows.append(Row(layer: l.name, offset: offset, filters: l.filters, cells: cells))
        }
        return HeatMap(rows: rows, layersOmitted: max(0, layers.count - rows.count), maxCells: maxCells)
    }

    /// At most `maxCells` cells over `values` (global indices from `offset`): bins of
    /// ⌊n/m⌋ or ⌈n/m⌉ consecutive filters, each showing its maximum. NaN counts as lowest.
    static func bin(_ values: ArraySlice<Double>, offset: Int, maxCells: Int) -> [Cell] {
        let n = values.count
        guard n > 0 else { return [] }
        let m = min(n, maxCells)
        var cells: [Cell] = []
        cells.reserveCapacity(m)
        let base = values.startIndex
        for b in 0..<m {
            let lo = b * n / m, hi = (b + 1) * n / m
            var best = lo
            for i in lo..<hi where values[base + i] > values[base + best] || values[base + best].isNaN { best = i }
            cells.append(Cell(first: offset + lo, count: hi - lo, score: values[base + best], argmax: offset + best))
        }
        return cells
    }
}

/// `GET /`: every model, the firing alerts, a heat map per model (up to the bounds).
struct OverviewPage: Sendable {
    var status: StatusReply
    /// Firing alerts, oldest first, at most `StatusPage.maxAlerts`; `firingTotal` counts them all.
    var firing: [AlertMessage]
    var firingTotal: Int
    /// Model name → heat map of its latest prediction (calibrated models with a row, up to `StatusPage.overviewHeatMaps`).
    var heatMaps: [String: HeatMap]
}

/// `GET /model/<name>`.
struct ModelPage: Sendable {
    var model: StatusReply.Model
    var heatMap: HeatMap?
    var topPOT: TopReply?
    var topZ: TopReply?
    /// Why there is no top table (calibrating, no prediction yet).
    var topNote: String?
    var firing: [AlertMessage]
    var firingTotal: Int
}

/// `GET /filter/<name>/<index>`.
struct FilterPage: Sendable {
    var filter: FilterReply
    /// Value and score of this filter in the recent window, oldest first (empty while calibrating).
    var history: [FilterReply.Recent]
    var phase: String
}

enum StatusPageAnswer: Sendable {
    case overview(OverviewPage)
    case model(ModelPage)
    case filter(FilterPage)
    /// No such model / filter: the reason, as the query would say it.
    case notFound(String)
}

// MARK: - Routing and URLs

enum StatusPage {
    /// Bounds (docs/status-page.md §Bounds).
    static let maxModels = 64
    static let maxAlerts = 100
    static let overviewHeatMaps = 4
    static let overviewLayers = 16
    static let overviewCells = 64
    static let modelLayers = 48
    static let modelCells = 96
    static let topK = 20
    static let historyRows = 256
    static let maxURIBytes = 4096
    static let maxNameChars = 160

    enum Route: Equatable {
        case metrics
        case page(StatusPageRequest)
        case badRequest(String)
        case notFound(String)
        case methodNotAllowed
        case uriTooLong
    }

    /// Routes a request line. GET and HEAD only; the query string is ignored (except on /metrics, as before).
    static func route(method: String, uri: String) -> Route {
        guard method == "GET" || method == "HEAD" else { return .methodNotAllowed }
        guard uri.utf8.count <= maxURIBytes else { return .uriTooLong }
        var path = Substring(uri)
        if let q = path.firstIndex(where: { $0 == "?" || $0 == "#" }) { path = path[..<q] }
        if path == "/metrics" { return .metrics }
        if path == "/" || path.isEmpty { return .page(.overview) }
        guard path.hasPrefix("/") else { return .notFound("the path must start with /") }
        let parts = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        switch parts.first {
        case "model":
            guard parts.count == 2, !parts[1].isEmpty else { return .notFound("a model page is /model/<percent-encoded model name>") }
            guard let name = percentDecode(parts[1]) else { return .badRequest("the model name in the URL is not valid percent-encoded UTF-8") }
            return .page(.model(name))
        case "filter":
            guard parts.count == 3, !parts[1].isEmpty else { return .notFound("a filter page is /filter/<percent-encoded model name>/<filter index>") }
            guard let name = percentDecode(parts[1]) else { return .badRequest("the model name in the URL is not valid percent-encoded UTF-8") }
            guard parts[2].count <= 9, let j = Int(parts[2]), j >= 0, parts[2].allSatisfy(\.isASCII) else {
                return .badRequest("the filter index must be a non-negative integer (the global index, as `saliencyctl top` shows)")
            }
            return .page(.filter(model: name, index: j))
        default:
            return .notFound("no page here")
        }
    }

    /// RFC 3986 percent-decoding of one path segment (no `+` → space). Nil for a malformed escape
    /// (`%zz`, a lone `%`) or bytes that are not UTF-8.
    static func percentDecode(_ s: Substring) -> String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(s.utf8.count)
        var it = s.utf8.makeIterator()
        func hex(_ c: UInt8?) -> UInt8? {
            switch c {
            case .some(let c) where c >= 48 && c <= 57: c - 48
            case .some(let c) where c >= 65 && c <= 70: c - 55
            case .some(let c) where c >= 97 && c <= 102: c - 87
            default: nil
            }
        }
        while let c = it.next() {
            if c == UInt8(ascii: "%") {
                guard let hi = hex(it.next()), let lo = hex(it.next()) else { return nil }
                bytes.append(hi << 4 | lo)
            } else {
                bytes.append(c)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    /// Percent-encodes everything but RFC 3986 unreserved characters: the result is safe in a path
    /// segment and in an HTML attribute.
    static func percentEncode(_ s: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count)
        for b in s.utf8 {
            switch b {
            case 65...90, 97...122, 48...57, UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"): out.append(b)
            default: out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The page of one model, relative to the server root (the alerts' `generatorURL` path).
    static func modelPath(_ model: String) -> String { "/model/" + percentEncode(model) }
    /// The page of one filter, relative to the server root (the alerts' `generatorURL` path).
    static func filterPath(_ model: String, _ filter: Int) -> String { "/filter/" + percentEncode(model) + "/\(filter)" }

    // MARK: - Escaping and formatting

    /// HTML-escapes text and attribute values (`&<>"'`); control characters become U+FFFD.
    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for ch in s.unicodeScalars {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            case "\n", "\t": out.unicodeScalars.append(ch)
            default:
                if ch.value < 0x20 || (ch.value >= 0x7F && ch.value < 0xA0) { out += "\u{FFFD}" } else { out.unicodeScalars.append(ch) }
            }
        }
        return out
    }

    /// A producer-controlled name, shortened to `maxNameChars` and escaped.
    static func name(_ s: String) -> String {
        s.count > maxNameChars ? escape(String(s.prefix(maxNameChars))) + "…" : escape(s)
    }

    static func fmt(_ v: Double, _ digits: Int = 4) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "∞" : "−∞" }
        if v != 0 && (abs(v) >= 1e6 || abs(v) < 1e-3) { return String(format: "%.\(max(digits - 1, 1))e", v) }
        return String(format: "%.\(digits)g", v)
    }

    static func fmt(_ v: Double?, _ digits: Int = 4) -> String { v.map { fmt($0, digits) } ?? "–" }

    /// "42 s", "3 min 5 s", "2 h 10 min", "4 d 3 h".
    static func duration(_ s: Double) -> String {
        guard s.isFinite, s >= 0 else { return "?" }
        let t = Int(s)
        if t < 60 { return "\(t) s" }
        if t < 3600 { return "\(t / 60) min \(t % 60) s" }
        if t < 86400 { return "\(t / 3600) h \(t % 3600 / 60) min" }
        return "\(t / 86400) d \(t % 86400 / 3600) h"
    }

    // MARK: - Colour scale

    /// Colour stops of the POT score −log10 p (0: typical; ≥ 8: p ≤ 1e-8).
    static let colourStops: [(score: Double, rgb: (Double, Double, Double))] = [
        (0, (0xf4, 0xf4, 0xf2)), (1.5, (0xfe, 0xd9, 0x76)), (3, (0xfd, 0x8d, 0x3c)), (5, (0xe3, 0x1a, 0x1c)), (8, (0x67, 0x00, 0x0d)),
    ]

    static func colour(score s: Double) -> String {
        let stops = colourStops
        let v = s.isNaN ? 0 : min(max(s, 0), stops.last!.score)
        var i = 0
        while i + 1 < stops.count - 1 && v > stops[i + 1].score { i += 1 }
        let a = stops[i], b = stops[i + 1]
        let t = b.score > a.score ? min(max((v - a.score) / (b.score - a.score), 0), 1) : 0
        func c(_ x: Double, _ y: Double) -> Int { Int((x + (y - x) * t).rounded()) }
        return String(format: "#%02x%02x%02x", c(a.rgb.0, b.rgb.0), c(a.rgb.1, b.rgb.1), c(a.rgb.2, b.rgb.2))
    }
}

// MARK: - Pages

extension StatusPage {
    static let style = """
    body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fff}
    header{background:#263238;color:#eceff1;padding:8px 16px}header a{color:#b3e5fc;margin-right:14px}
    main{padding:8px 16px}h1{font-size:20px;margin:8px 0}h2{font-size:16px;margin:18px 0 6px}
    table{border-collapse:collapse;margin:4px 0}th,td{border:1px solid #ddd;padding:2px 8px;text-align:left}
    th{background:#f3f5f7}td.n{text-align:right;font-variant-numeric:tabular-nums}
    .bar{display:inline-block;width:120px;height:10px;background:#e0e0e0;vertical-align:middle}
    .bar span{display:block;height:10px;background:#43a047}
    .firing{color:#c62828;font-weight:bold}.note{color:#666;font-size:12px}
    svg text{font:11px system-ui,sans-serif}
    """

    static func document(title: String, refresh: Bool, body: String) -> String {
        var h = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        if refresh { h += "<meta http-equiv=\"refresh\" content=\"5\">" }
        h += "<title>\(escape(title))</title><style>\(style)</style></head><body>"
        h += "<header><b>saliencyd</b> &nbsp; <a href=\"/\">overview</a><a href=\"/metrics\">/metrics</a></header><main>"
        h += body
        h += "</main></body></html>\n"
        return h
    }

    static func progress(_ m: StatusReply.Model) -> String {
        let total = max(m.calibration_total, 1)
        let pct = min(100, max(0, 100 * Double(m.calibration_seen) / Double(total)))
        return "<span class=\"bar\" title=\"\(m.calibration_seen)/\(m.calibration_total)\"><span style=\"width:\(String(format: "%.0f", pct))%\"></span></span> \(m.calibration_seen)/\(m.calibration_total)"
    }

    static func modelsTable(_ models: ArraySlice<StatusReply.Model>) -> String {
        var h = "<table class=\"models\"><tr><th>model</th><th>phase</th><th>calibration</th><th>filters</th><th>layers</th><th>rows</th><th>rows/s</th><th>firing</th><th>refits due</th></tr>"
        for m in models {
            let firing = m.firing + (m.model_alert ? 1 : 0)
            h += "<tr><td><a href=\"\(modelPath(m.model))\">\(name(m.model))</a></td><td>\(escape(m.phase))</td><td>\(progress(m))</td>"
            h += "<td class=\"n\">\(m.filters)</td><td class=\"n\">\(m.layers)</td><td class=\"n\">\(m.rows)</td><td class=\"n\">\(fmt(m.rate_per_s, 3))</td>"
            h += "<td class=\"n\(firing > 0 ? " firing" : "")\">\(firing)\(m.model_alert ? " (model shift)" : "")</td><td class=\"n\">\(m.due)</td></tr>"
        }
        return h + "</table>"
    }

    static func alertsTable(_ alerts: [AlertMessage], total: Int) -> String {
        guard !alerts.isEmpty else { return "<p>No firing alerts.</p>" }
        var h = "<table class=\"alerts\"><tr><th>seq</th><th>model</th><th>layer</th><th>filter</th><th>channel</th><th>score −log10 p</th><th>exceedances</th><th>value</th><th>extreme threshold</th><th>since</th></tr>"
        for a in alerts {
            let filterCell = a.filter.map { "<a href=\"\(filterPath(a.model, $0))\">\($0)</a>" } ?? "<a href=\"\(modelPath(a.model))\">model shift</a>"
            let lower = a.labels["direction"] == "lower" ? " <span class=\"note\">(lower tail)</span>" : ""
            h += "<tr class=\"firing-alert\"><td class=\"n\">\(a.seq)</td><td><a href=\"\(modelPath(a.model))\">\(name(a.model))</a></td><td>\(name(a.layer))\(lower)</td>"
            h += "<td class=\"n\">\(filterCell)</td><td class=\"n\">\(a.channel.map(String.init) ?? "–")</td><td class=\"n\">\(fmt(a.score))</td>"
            h += "<td class=\"n\">\(a.exceedances.map { "\($0)\(a.window.map { "/\($0)" } ?? "")" } ?? "–")</td><td class=\"n\">\(fmt(a.value))</td>"
            h += "<td class=\"n\">\(fmt(a.extreme_threshold))</td><td>\(escape(a.startsAt))</td></tr>"
        }
        h += "</table>"
        if total > alerts.count { h += "<p class=\"note\">… \(total - alerts.count) more firing alerts (saliencyctl alerts --active lists all).</p>" }
        return h
    }

    /// The heat map as inline SVG: one `<g class="hm-row">` per layer; cells link to filter pages when `links`.
    static func heatMapSVG(_ hm: HeatMap, model: String, links: Bool) -> String {
        let label = 150, cell = max(4, min(14, 832 / max(hm.maxCells, 1))), rowH = 16, top = 4
        let widest = hm.rows.map(\.cells.count).max() ?? 0
        let width = label + widest * cell + 8
        let height = top + hm.rows.count * rowH + 4
        var h = "<svg class=\"heatmap\" xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" role=\"img\" aria-label=\"per-layer POT scores of the latest prediction\">"
        for (r, row) in hm.rows.enumerated() {
            let y = top + r * rowH
            let shown = row.layer.count > 22 ? String(row.layer.prefix(21)) + "…" : row.layer
            h += "<g class=\"hm-row\" data-layer=\"\(escape(String(row.layer.prefix(maxNameChars))))\" data-filters=\"\(row.filters)\" data-cells=\"\(row.cells.count)\">"
            h += "<text x=\"\(label - 6)\" y=\"\(y + rowH - 4)\" text-anchor=\"end\">\(escape(shown))<title>\(name(row.layer)): \(row.filters) filters\(row.binned ? ", \(row.cells.count) bins (max per bin)" : "")</title></text>"
            for (i, c) in row.cells.enumerated() {
                let range = c.count > 1 ? "filters \(c.first)–\(c.first + c.count - 1), max at \(c.argmax)" : "filter \(c.first)"
                let mark = c.extremes > 0 ? " class=\"x\" stroke=\"#000\" stroke-width=\"1.5\"" : ""
                let note = c.extremes > 0 ? ", \(c.extremes) above the extreme threshold" : ""
                let rect = "<rect x=\"\(label + i * cell)\" y=\"\(y)\" width=\"\(cell - 2)\" height=\"\(rowH - 3)\" fill=\"\(colour(score: c.score))\"\(mark)>"
                    + "<title>\(range) (channel \(c.argmax - row.offset)): \(fmt(c.score, 3))\(note)</title></rect>"
                h += links ? "<a href=\"\(filterPath(model, c.argmax))\">\(rect)</a>" : rect
            }
            h += "</g>"
        }
        h += "</svg>"
        return h
    }

    static func legendSVG() -> String {
        let steps = 9, w = 36
        var h = "<svg class=\"legend\" xmlns=\"http://www.w3.org/2000/svg\" width=\"\(steps * w + 300)\" height=\"34\">"
        for i in 0..<steps {
            h += "<rect x=\"\(i * w)\" y=\"2\" width=\"\(w)\" height=\"14\" fill=\"\(colour(score: Double(i)))\"/>"
            h += "<text x=\"\(i * w + 2)\" y=\"29\">\(i)\(i == steps - 1 ? "+" : "")</text>"
        }
        h += "<text x=\"\(steps * w + 8)\" y=\"13\">POT tail score −log10 p (8+: p ≤ 1e-8)</text>"
        h += "<rect x=\"\(steps * w + 9)\" y=\"20\" width=\"12\" height=\"11\" fill=\"#fff\" stroke=\"#000\" stroke-width=\"1.5\"/><text x=\"\(steps * w + 26)\" y=\"29\">above its extreme threshold</text></svg>"
        return h
    }

    static func heatMapSection(_ hm: HeatMap, model: String, links: Bool) -> String {
        var h = "<div class=\"hm\">" + heatMapSVG(hm, model: model, links: links) + "</div>" + legendSVG()
        var notes: [String] = []
        if hm.binned { notes.append("Layers wider than \(hm.maxCells) filters are binned to \(hm.maxCells) cells showing the highest score in each bin (hover a cell for its filter range).") }
        if hm.layersOmitted > 0 { notes.append("… \(hm.layersOmitted) more layers not drawn (see the model page or saliencyctl top).") }
        if links { notes.append("Click a cell for its filter.") }
        if !notes.isEmpty { h += "<p class=\"note\">" + notes.joined(separator: " ") + "</p>" }
        return h
    }

    static func overview(_ p: OverviewPage, delivery: DeliveryStats.Snapshot? = nil) -> String {
        let s = p.status
        var h = "<h1>saliencyd \(escape(s.version))</h1>"
        h += "<p>up \(duration(s.uptime_s)) · \(s.models.count) model(s) · <span class=\"\(s.firing > 0 ? "firing" : "")\">\(s.firing) firing</span> · last alert seq \(s.alert_seq) · \(s.queries) queries · kernels \(escape(s.kernels))</p>"
        if let d = delivery, d.enabled { h += deliveryLine(d) }
        h += "<h2>Models</h2>"
        if s.models.isEmpty {
            h += "<p>No model yet: the daemon has not received a schema. Producers publish one before their first prediction (docs/protocol.md).</p>"
        } else {
            h += modelsTable(s.models.prefix(maxModels))
            if s.models.count > maxModels { h += "<p class=\"note\">… \(s.models.count - maxModels) more models (saliencyctl status lists all).</p>" }
        }
        h += "<h2>Firing alerts</h2>" + alertsTable(p.firing, total: p.firingTotal)
        var drawn = 0
        for m in s.models.prefix(maxModels) {
            h += "<h2>Latest prediction: <a href=\"\(modelPath(m.model))\">\(name(m.model))</a></h2>"
            if let hm = p.heatMaps[m.model] {
                h += heatMapSection(hm, model: m.model, links: true)
                drawn += 1
            } else if m.phase == "calibrating" {
                h += "<p class=\"note\">Calibrating (\(m.calibration_seen)/\(m.calibration_total)): scores exist once calibration completes.</p>"
            } else if drawn >= overviewHeatMaps {
                h += "<p class=\"note\">Heat map on the model page (the overview draws \(overviewHeatMaps)).</p>"
            } else {
                h += "<p class=\"note\">No prediction since the daemon started.</p>"
            }
        }
        return document(title: "saliencyd status", refresh: true, body: h)
    }

    static func deliveryLine(_ d: DeliveryStats.Snapshot) -> String {
        let sent = d.targets.reduce(0) { $0 + $1.sent }, failed = d.targets.reduce(0) { $0 + $1.failed }
        let up = d.targets.filter(\.up).count
        return "<p class=\"delivery\">Alertmanager delivery: \(up)/\(d.targets.count) up · \(sent) sent · \(failed) failed · \(d.dropped) dropped · queue \(d.queued)/\(d.capacity)</p>"
    }

    static func topTable(_ t: TopReply, model: String) -> String {
        let pot = t.by.hasSuffix("pot"), dir = t.top.contains { $0.direction != nil }
        var h = "<table class=\"top\"><tr><th>rank</th><th>filter</th><th>layer</th><th>channel</th><th>score</th>\(pot ? "<th>p</th>" : "")\(dir ? "<th>tail</th>" : "")</tr>"
        for (i, e) in t.top.enumerated() {
            h += "<tr><td class=\"n\">\(i + 1)</td><td class=\"n\"><a href=\"\(filterPath(model, e.filter))\">\(e.filter)</a></td><td>\(name(e.layer))</td>"
            h += "<td class=\"n\">\(e.channel)</td><td class=\"n\">\(fmt(e.score, 5))</td>\(pot ? "<td class=\"n\">\(fmt(e.p))</td>" : "")"
            h += "\(dir ? "<td>\(escape(e.direction ?? ""))</td>" : "")</tr>"
        }
        return h + "</table>"
    }

    static func model(_ p: ModelPage) -> String {
        let m = p.model
        var h = "<h1>Model \(name(m.model))</h1>"
        h += modelsTable([m][...])
        h += "<p class=\"note\">quantity \(escape(m.quantity ?? "saliency")) · fingerprint \(escape(m.fingerprint)) · alert rule: \(m.alert_rule.fire_count) extremes in \(m.alert_rule.window) predictions fire, below \(m.alert_rule.resolve_below) resolve · \(m.refits) refits</p>"
        h += "<h2>Firing alerts</h2>" + alertsTable(p.firing, total: p.firingTotal)
        h += "<h2>Latest prediction</h2>"
        if let hm = p.heatMap { h += heatMapSection(hm, model: m.model, links: true) } else { h += "<p class=\"note\">\(escape(p.topNote ?? "No scores yet."))</p>" }
        if let t = p.topPOT { h += "<h2>Top \(t.top.count) by POT tail score</h2>" + topTable(t, model: m.model) }
        if let t = p.topZ { h += "<h2>Top \(t.top.count) by z-score</h2>" + topTable(t, model: m.model) }
        return document(title: "saliencyd: \(m.model)", refresh: true, body: h)
    }

    /// A sparkline of `values` (oldest left) with optional dashed reference lines.
    static func sparkline(_ values: [Double], refs: [(label: String, value: Double)], cls: String, highlightAbove: Double? = nil) -> String {
        let w = 640.0, hgt = 120.0, pad = 6.0, left = 56.0
        let finite = values.filter(\.isFinite) + refs.map(\.value).filter(\.isFinite)
        let minimum = finite.min() ?? 0, maximum = finite.max() ?? 1
        // Values spanning more than two decades (a shift of 1000×) are drawn on a log scale.
        let log = minimum > 0 && maximum / minimum > 100
        func t(_ v: Double) -> Double { log ? Double.log10(max(v, minimum)) : v }
        var lo = t(minimum), hi = t(maximum)
        if hi - lo < 1e-12 { lo -= 0.5; hi += 0.5 }
        func x(_ i: Int) -> Double { left + (values.count > 1 ? Double(i) / Double(values.count - 1) : 0.5) * (w - left - pad) }
        func y(_ v: Double) -> Double { let c = v.isFinite ? t(v) : (v > 0 ? hi : lo); return pad + (1 - (c - lo) / (hi - lo)) * (hgt - 2 * pad) }
        var h = "<svg class=\"\(cls)\" xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(hgt))\">"
        h += "<rect x=\"\(left)\" y=\"0\" width=\"\(w - left)\" height=\"\(hgt)\" fill=\"#fafafa\" stroke=\"#ddd\"/>"
        h += "<text x=\"2\" y=\"\(pad + 8)\">\(fmt(maximum, 3))</text><text x=\"2\" y=\"\(hgt - pad)\">\(fmt(minimum, 3))</text>"
        if log { h += "<text x=\"2\" y=\"\(hgt / 2 + 4)\" fill=\"#777\">log</text>" }
        for (k, r) in refs.enumerated() where r.value.isFinite {
            let yy = String(format: "%.1f", y(r.value))
            // Labels alternate ends so that close lines stay readable.
            let lx = k % 2 == 0 ? left + 4 : w - 4, anchor = k % 2 == 0 ? "start" : "end"
            h += "<line x1=\"\(left)\" x2=\"\(w)\" y1=\"\(yy)\" y2=\"\(yy)\" stroke=\"#888\" stroke-dasharray=\"4 3\"/><text x=\"\(lx)\" y=\"\(yy)\" dy=\"-2\" text-anchor=\"\(anchor)\" fill=\"#555\">\(escape(r.label)) \(fmt(r.value, 4))</text>"
        }
        if !values.isEmpty {
            let pts = values.indices.map { String(format: "%.1f,%.1f", x($0), y(values[$0])) }.joined(separator: " ")
            h += "<polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.5\" points=\"\(pts)\"/>"
            for (i, v) in values.enumerated() {
                let hot = highlightAbove.map { v > $0 } ?? false
                h += "<circle cx=\"\(String(format: "%.1f", x(i)))\" cy=\"\(String(format: "%.1f", y(v)))\" r=\"\(hot ? 3 : 1.5)\" fill=\"\(hot ? "#c62828" : "#1565c0")\"/>"
            }
        }
        return h + "</svg>"
    }

    static func filter(_ p: FilterPage) -> String {
        let f = p.filter
        var h = "<h1>Filter \(f.filter) of <a href=\"\(modelPath(f.model))\">\(name(f.model))</a>: \(name(f.layer))[\(f.channel)]"
        if f.firing { h += " <span class=\"firing\">FIRING</span>" }
        h += "</h1>"
        h += "<h2>Tail model</h2><table class=\"tail\">"
        let rows: [(String, String)] = [
            ("tail", escape(f.tail)), ("threshold", fmt(f.threshold, 6)), ("extreme threshold", fmt(f.extreme_threshold, 6)),
            ("GPD shape ξ", fmt(f.shape, 6)), ("GPD scale σ", fmt(f.scale, 6)), ("observations n", "\(f.n)"),
            ("peaks over threshold", "\(f.peaks)"), ("peaks in ring", "\(f.peaks_in_ring)"), ("peaks since fit", "\(f.peaks_since_fit)"),
            ("refit due", f.due ? "yes" : "no"), ("extremes", "\(f.extremes)"), ("mean", fmt(f.mean, 6)), ("std", fmt(f.std, 6)),
            ("exceedances in the alert window", "\(f.window_exceedances)"), ("model phase", escape(p.phase)),
        ]
        for (k, v) in rows { h += "<tr><th>\(k)</th><td class=\"n\" data-key=\"\(k)\">\(v)</td></tr>" }
        h += "</table>"
        if let lo = f.lower {
            h += "<h2>Lower tail\(lo.firing ? " <span class=\"firing\">FIRING</span>" : "")</h2><table class=\"tail lower\">"
            let lrows: [(String, String)] = [
                ("tail", escape(lo.tail)), ("threshold", fmt(lo.threshold, 6)), ("extreme threshold", fmt(lo.extreme_threshold, 6)),
                ("GPD shape ξ", fmt(lo.shape, 6)), ("GPD scale σ", fmt(lo.scale, 6)), ("observations n", "\(lo.n)"), ("peaks", "\(lo.peaks)"),
                ("extremes", "\(lo.extremes)"), ("zero mode", escape(lo.zero_mode)), ("zeros in calibration", "\(lo.calibration_zeros)"),
                ("zeros", "\(lo.zeros)"), ("current zero run", "\(lo.zero_run)\(lo.zero_run_threshold.map { " (fires at \($0))" } ?? "")"),
                ("exceedances in the alert window", "\(lo.window_exceedances)"),
            ]
            for (k, v) in lrows { h += "<tr><th>\(k)</th><td class=\"n\" data-key=\"lower \(k)\">\(v)</td></tr>" }
            h += "</table>"
        }
        if p.history.isEmpty {
            h += "<p class=\"note\">No recent scores: the model is calibrating or has had no prediction since the daemon started.</p>"
        } else {
            h += "<h2>Recent saliency values (\(p.history.count) predictions, oldest left)</h2>"
            h += sparkline(p.history.map(\.value), refs: [("threshold", f.threshold), ("extreme", f.extreme_threshold)], cls: "spark-value",
                           highlightAbove: f.extreme_threshold)
            h += "<h2>Recent POT tail scores −log10 p</h2>"
            h += sparkline(p.history.map(\.score), refs: [], cls: "spark-score")
            h += "<table class=\"recent\"><tr><th>age</th><th>value</th><th>score</th><th>p</th><th>z</th></tr>"
            for (i, r) in p.history.reversed().prefix(16).enumerated() {
                h += "<tr><td class=\"n\">\(i)</td><td class=\"n\">\(fmt(r.value, 6))</td><td class=\"n\">\(fmt(r.score))</td><td class=\"n\">\(fmt(r.p))</td><td class=\"n\">\(fmt(r.zscore))</td></tr>"
            }
            h += "</table><p class=\"note\">Newest 16 rows; age 0 is the latest prediction.</p>"
        }
        return document(title: "saliencyd: \(f.model) filter \(f.filter)", refresh: false, body: h)
    }

    /// An error page (404, 400, 503, …): what happened and where to go.
    static func error(status: Int, title: String, detail: String, path: String) -> String {
        var h = "<h1>\(status) \(escape(title))</h1><p>\(escape(detail))</p>"
        h += "<p>Requested: <code>\(escape(String(path.prefix(300))))</code></p>"
        h += "<p>Pages: <a href=\"/\">/</a> (overview) · <code>/model/&lt;percent-encoded model&gt;</code> · <code>/filter/&lt;percent-encoded model&gt;/&lt;filter index&gt;</code> · <a href=\"/metrics\">/metrics</a> (Prometheus).</p>"
        return document(title: "\(status) \(title)", refresh: false, body: h)
    }
}
