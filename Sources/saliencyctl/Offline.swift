import ArgumentParser
import Foundation
import CKernels
import EVTOnline
import SaliencyCore

struct Fit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fit a generalized Pareto tail to one series (Grimshaw maximum likelihood).",
        discussion: "FILE is a 1-D .npy or a text file with one number per line. Peaks are the values above the threshold, minus it.")

    @Argument(help: "The series (.npy or text).") var file: String
    @Option(help: "Quantile level of the threshold (numpy 'linear' quantile).") var level: Double = 0.90
    @Option(help: "Explicit threshold instead of --level (0: every positive value is a peak).") var threshold: Double?
    @Option(name: .customLong("min-peaks"), help: "Fewer peaks than this: no GPD fit (method insufficient_peaks).") var minPeaks = 10
    @Flag(name: .customLong("allow-negative"), help: "Accept negative values (a generic series rather than saliency magnitudes).") var allowNegative = false
    @OptionGroup var output: OutputOptions

    struct Result: Codable { var n: Int; var threshold: Double; var peaks: Int; var shape: Double; var scale: Double; var loglik: Double; var method: String }

    func validate() throws {
        guard level > 0, level < 1 else { throw ValidationError("--level must be in (0, 1), got \(level)") }
        if let t = threshold, !t.isFinite { throw ValidationError("--threshold must be finite") }
        guard minPeaks >= 1 else { throw ValidationError("--min-peaks must be ≥ 1") }
    }

    func run() throws {
        let x = try IO.readSeries(file, allowNegative: allowNegative)
        guard !x.isEmpty else { throw InputError("'\(file)' holds no values") }
        let t: Double
        if let th = threshold {
            t = th
        } else {
            let s = x.sorted()
            let pos = level * Double(s.count - 1)
            let lo = Int(pos), hi = min(lo + 1, s.count - 1)
            t = s[lo] + (pos - Double(lo)) * (s[hi] - s[lo])
        }
        let peaks = x.filter { $0 > t }.map { $0 - t }
        var fitter = GrimshawFitter(capacity: max(peaks.count, 1))
        let f = peaks.withUnsafeBufferPointer { fitter.fit($0, minPeaks: minPeaks) }
        let r = Result(n: x.count, threshold: t, peaks: peaks.count, shape: f.gpd.shape, scale: f.gpd.scale, loglik: f.logLikelihood, method: f.method.label)
        if output.json { try IO.printJSON(r); return }
        var tb = Table(headers: ["n", "threshold", "peaks", "shape", "scale", "loglik", "method"])
        tb.rows.append([String(r.n), fmt(r.threshold), String(r.peaks), fmt(r.shape), fmt(r.scale), fmt(r.loglik, 8), r.method])
        print(tb.render())
    }
}

extension GPDFitMethod {
    var label: String {
        switch self {
        case .grimshaw: "grimshaw"
        case .exponential: "exponential"
        case .moments: "moments"
        case .insufficientPeaks: "insufficient_peaks"
        }
    }
}

struct Analyze: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Calibrate on reference rows, then rank the filters of every input row.",
        discussion: """
        REFERENCE and INPUT are 2-D .npy files [rows, K]; K must equal the schema's filter count.
        Rows with NaN, ±inf, negative values or a wrong width are rejected (stderr), counted, and
        never scored; the exit status is 3 if any input row was rejected.
        """)

    @Option(help: "Schema JSON ({\"model\": ..., \"layers\": [{\"name\": ..., \"filters\": N}, ...]}).") var schema: String
    @Option(help: "Reference rows (.npy [n, K]); all of them calibrate the model.") var reference: String
    @Option(help: "Rows to rank (.npy [m, K]).") var input: String
    @Option(help: "Score: pot, zscore, or one of them after a common-mode-free row transform: logres-pot, logres-zscore (per-layer log-residual), ratio-pot, ratio-zscore (per-layer ratio to the mean); docs/statistics.md, \"Common-mode-free scorers\"; or pooled-zscore (z with σ pooled over the model's filters, for Taylor-blame rows; docs/statistics.md, \"Pooled z-score\").") var by: ScoreKind = .pot
    @Option(help: "Threshold quantile level.") var level: Double = 0.90
    @Option(name: .customLong("top"), help: "How many filters per row.") var topK = 10
    @Option(help: "Risk q of the extreme threshold.") var q: Double = 1e-4
    @Option(help: "Tails: upper, lower (quiet or dead filters) or both (each gets q/2); with lower/both the table has a direction column.") var tails: TailSelection = .upper
    @Flag(help: "Absorb every input row after scoring it (as the daemon does) instead of scoring against the reference only.") var stream = false
    @OptionGroup var output: OutputOptions

    struct Entry: Codable { var filter: Int; var layer: String; var channel: Int; var score: Double; var p: Double?; var direction: String? = nil }
    struct Row: Codable { var row: Int; var top: [Entry] }

    func validate() throws {
        guard topK >= 1 else { throw ValidationError("--top must be ≥ 1") }
    }

    func run() throws {
        let sch = try IO.readSchema(schema)
        let ref = try IO.readMatrix(reference)
        let x = try IO.readMatrix(input)
        let k = sch.filterCount
        guard ref.columns == k else { throw InputError("reference has \(ref.columns) columns but schema '\(sch.model)' has \(k) filters") }
        guard x.columns == k else { throw InputError("input has \(x.columns) columns but schema '\(sch.model)' has \(k) filters") }
        var cfg = POTConfiguration()
        cfg.level = level
        cfg.q = q
        cfg.calibration = ref.rows
        cfg.refitsPerRow = 1e6   // offline: refit every due filter at once
        cfg.tails = tails
        cfg.transform = by.transform
        // The transformed scorers: reference and input rows are transformed (valid rows only) before the bank sees them.
        let transform = by.transform == .none ? nil : RowTransform(kind: by.transform, offsets: sch.offsets)
        let scratch = UnsafeMutableBufferPointer<Float>.allocate(capacity: k)
        defer { scratch.deallocate() }
        let bank: FilterBank
        do { bank = try FilterBank(filterCount: k, configuration: cfg) } catch { throw InputError(error.message) }
        try ref.values.withUnsafeBufferPointer { all in
            for r in 0..<ref.rows {
                let row = UnsafeBufferPointer(rebasing: all[(r * k)..<((r + 1) * k)])
                if let why = bank.validate(row) { throw InputError("reference row \(r) is invalid: \(why.explanation); calibration data must be clean") }
                if let t = transform {
                    t.apply(row, into: scratch)
                    bank.updateValidated(UnsafeBufferPointer(scratch))
                } else {
                    bank.updateValidated(row)
                }
            }
        }
        var rejected: [RowRejection: Int] = [:]
        let twoSided = tails != .upper && by.tailModel == .pot
        var table = Table(headers: ["row", "rank", "filter", "layer", "channel", "score"] + (by.tailModel == .pot ? ["p"] : []) + (twoSided ? ["direction"] : []))
        var progress = ProgressLine("analyze", total: x.rows)
        defer { progress.finish() }
        try x.values.withUnsafeBufferPointer { all in
            for r in 0..<x.rows {
                progress.update(r + 1)
                let raw = UnsafeBufferPointer(rebasing: all[(r * k)..<((r + 1) * k)])
                if let why = bank.validate(raw) {
                    rejected[why, default: 0] += 1
                    FileHandle.standardError.write(Data("row \(r) rejected: \(why.explanation)\n".utf8))
                    continue
                }
                let row: UnsafeBufferPointer<Float>
                if let t = transform {
                    t.apply(raw, into: scratch)
                    row = UnsafeBufferPointer(scratch)
                } else {
                    row = raw
                }
                if stream { bank.updateValidated(row) }
                let top = bank.top(row, k: topK, by: by)
                let entries = top.map { f -> Entry in
                    let (l, c) = sch.locate(f.filter)
                    return Entry(filter: f.filter, layer: sch.layers[l].name, channel: c, score: f.score, p: f.p,
                                 direction: twoSided ? bank.direction(filter: f.filter, value: row[f.filter]).rawValue : nil)
                }
                if output.json {
                    try IO.printJSON(Row(row: r, top: entries))
                } else {
                    for (i, e) in entries.enumerated() {
                        table.rows.append([String(r), String(i + 1), String(e.filter), e.layer, String(e.channel), fmt(e.score, 5)] + (by.tailModel == .pot ? [fmt(e.p ?? .nan, 4)] : [])
                                          + (twoSided ? [e.direction ?? "upper"] : []))
                    }
                }
            }
        }
        if !output.json { print(table.render()) }
        if !rejected.isEmpty {
            let summary = rejected.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue)=\($0.value)" }.joined(separator: " ")
            FileHandle.standardError.write(Data("\(rejected.values.reduce(0, +)) of \(x.rows) rows rejected: \(summary)\n".utf8))
            throw ExitCode(3)
        }
    }
}

extension ScoreKind: ExpressibleByArgument {}

extension RowRejection {
    var explanation: String {
        switch self {
        case .wrongWidth: "wrong_width (the row's length is not the schema's filter count)"
        case .nonFinite: "non_finite (NaN or ±inf; saliencies must be finite)"
        case .negative: "negative (saliencies are gradient magnitudes, ≥ 0)"
        }
    }
}

extension Error {
    var message: String { (self as? SaliencyError)?.message ?? "\(self)" }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the FilterBank update path on this machine (one core), to size deployments.",
        discussion: "Synthetic lognormal saliencies with per-filter scales; calibration first (not timed), then N timed updates, refits included.")

    @Option(help: "Filters K (ResNet-50: 26560, ResNet-18: 4800).") var filters = 26_560
    @Option(help: "Timed predictions.") var predictions = 20_000
    @Option(help: "Threshold quantile level.") var level: Double = 0.90
    @Option(help: "Calibration rows.") var calibration = 1000
    @Option(name: .customLong("refits-per-row"), help: "Refit budget per prediction.") var refitsPerRow = POTConfiguration().refitsPerRow
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(name: .customLong("max-peaks"), help: "Ring capacity per filter.") var maxPeaks = POTConfiguration().maxPeaks
    @Option(name: .customLong("peak-stride"), help: "Ring sampling stride (a power of two; 0 = automatic).") var peakStride = POTConfiguration().peakStride
    @Option(help: "Vector kernels: best (the CPU's best instruction set) or baseline (SSE2 on x86-64).") var kernels: KernelChoice = .best
    @Option(help: "Tails watched per filter: upper, lower or both (docs/statistics.md, \"Two tails\").") var tails: TailSelection = .upper
    @Option(help: "Row transform the bank monitors: none, layer-logres or layer-ratio (docs/statistics.md, \"Common-mode-free scorers\"); timed updates then include it, and the transform alone is timed too.") var transform: RowTransformKind = .none
    @Option(help: "Layers for the transform (contiguous, near-equal); with --filters 26560 the default is ResNet-50's 53 conv layers.") var layers: Int?
    @Flag(name: .customLong("no-pin"), help: "Do not pin the measuring thread to the CPU it starts on (by default it is pinned: a thread the scheduler migrates loses its L2 cache, and on small VMs runs then scatter by ±25 %).") var noPin = false
    enum KernelChoice: String, ExpressibleByArgument, CaseIterable { case best, baseline }
    @OptionGroup var output: OutputOptions

    struct Result: Codable {
        var filters: Int; var predictions: Int; var level: Double
        var predictions_per_second: Double; var values_per_second: Double; var ns_per_value: Double; var bytes_per_filter: Int
        var refits: UInt64; var peaks_per_row: Double; var extremes: Int
        var peak_stride: Int; var kernels: String; var pinned_cpu: Int?
        var tails: String = "upper"; var lower_extremes: Int = 0
        /// Rows per second of the timed loop's thread CPU time (excludes time the pinned thread waited for the CPU on a shared machine).
        var cpu_predictions_per_second: Double? = nil
        var transform: String = "none"; var layers: Int = 0; var transform_ns_per_value: Double? = nil
    }

    /// ResNet-50's conv layers (53, 26,560 filters): stem, then per stage blocks of (w, w, 4w) and a downsample of 4w.
    static let resnet50Widths: [Int] = {
        var w = [64]
        for (blocks, width) in [(3, 64), (4, 128), (6, 256), (3, 512)] {
            for _ in 0..<blocks { w += [width, width, 4 * width] }
            w.append(4 * width)
        }
        return w
    }()

    func layerOffsets() -> [Int] {
        if layers == nil, filters == Self.resnet50Widths.reduce(0, +) {
            return Self.resnet50Widths.reduce(into: [0]) { $0.append($0.last! + $1) }
        }
        let n = max(1, min(layers ?? 53, filters))
        return (0...n).map { $0 * filters / n }
    }

    func run() throws {
        let filters = self.filters, predictions = self.predictions   // locals: the option getters are slow generic code, read per row in the timed loop
        var cfg = POTConfiguration()
        cfg.level = level
        cfg.calibration = calibration
        cfg.refitsPerRow = refitsPerRow
        cfg.maxPeaks = maxPeaks
        cfg.peakStride = peakStride
        cfg.tails = tails
        cfg.transform = transform
        let offsets = layerOffsets()
        let rowTransform = transform == .none ? nil : RowTransform(kind: transform, offsets: offsets)
        let scratch = UnsafeMutableBufferPointer<Float>.allocate(capacity: filters)
        defer { scratch.deallocate() }
        let pinnedCPU = noPin ? nil : pinToCurrentCPU()
        let bank: FilterBank
        do { bank = try FilterBank(filterCount: filters, configuration: cfg, kernels: kernels == .baseline ? .baseline : .best) } catch { throw InputError(error.message) }
        var rng = SplitMix64(seed: seed)
        let scales = (0..<filters).map { _ in Float(0.5 + rng.uniform()) }
        let pool = 64
        var rows = [Float](repeating: 0, count: pool * filters)
        func fill() {
            for r in 0..<pool { for j in 0..<filters { rows[r * filters + j] = scales[j] * Float(exp(0.6 * rng.normal())) } }
        }
        fill()
        // Calibrate on `calibration` distinct rows (a fresh pool every 64), as a real feed would.
        for start in stride(from: 0, to: calibration, by: pool) {
            if start > 0 { fill() }
            rows.withUnsafeBufferPointer { all in
                for r in 0..<min(pool, calibration - start) {
                    let row = UnsafeBufferPointer(rebasing: all[(r * filters)..<((r + 1) * filters)])
                    if let t = rowTransform { t.apply(row, into: scratch); bank.updateValidated(UnsafeBufferPointer(scratch)) } else { bank.updateValidated(row) }
                }
            }
        }
        fill()   // fresh rows for the timed part
        let refitsBefore = bank.refitCount
        var peaks = 0, extremes = 0, lowerExtremes = 0
        let clock = ContinuousClock()
        var cpu0 = timespec(), cpu1 = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu0)
        let elapsed = rows.withUnsafeBufferPointer { all in
            clock.measure {
                for i in 0..<predictions {
                    let r = i % pool
                    let row = UnsafeBufferPointer(rebasing: all[(r * filters)..<((r + 1) * filters)])
                    let res: FilterBank.RowResult
                    if let t = rowTransform { t.apply(row, into: scratch); res = bank.updateValidated(UnsafeBufferPointer(scratch)) } else { res = bank.updateValidated(row) }
                    peaks += res.peaks
                    extremes += res.extremes
                    lowerExtremes += res.lowerExtremes
                }
            }
        }
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu1)
        let cpuNs: Int = (cpu1.tv_sec - cpu0.tv_sec) * 1_000_000_000 + (cpu1.tv_nsec - cpu0.tv_nsec)
        let cpuPPS: Double = Double(predictions) * 1e9 / Double(cpuNs)
        let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        // The transform alone, over the same rows (as many passes as timed updates, at least 2,000).
        var transformNs: Double? = nil
        if let t = rowTransform {
            let passes = max(predictions, 2_000)
            let e = rows.withUnsafeBufferPointer { all in
                clock.measure {
                    for i in 0..<passes { t.apply(UnsafeBufferPointer(rebasing: all[((i % pool) * filters)..<((i % pool + 1) * filters)]), into: scratch) }
                }
            }
            transformNs = (Double(e.components.seconds) + Double(e.components.attoseconds) * 1e-18) * 1e9 / (Double(passes) * Double(filters))
        }
        let pps = Double(predictions) / secs
        var r = Result(filters: filters, predictions: predictions, level: level, predictions_per_second: pps,
                       values_per_second: pps * Double(filters), ns_per_value: secs * 1e9 / (Double(predictions) * Double(filters)),
                       bytes_per_filter: bank.bytesPerFilter, refits: bank.refitCount - refitsBefore,
                       peaks_per_row: Double(peaks) / Double(predictions), extremes: extremes,
                       peak_stride: bank.peakStride, kernels: bank.kernels.isa, pinned_cpu: pinnedCPU,
                       tails: tails.rawValue, lower_extremes: lowerExtremes, transform: transform.rawValue, layers: offsets.count - 1,
                       transform_ns_per_value: transformNs)
        r.cpu_predictions_per_second = cpuPPS
        if output.json { try IO.printJSON(r); return }
        var t = Table(headers: ["filters", "level", "tails", "transform", "transform ns/value", "predictions/s", "values/s", "ns/value", "bytes/filter", "refits", "peaks/row", "stride", "kernels", "cpu"])
        t.rows.append([String(filters), fmt(level, 3), tails.rawValue, transform.rawValue, transformNs.map { fmt($0, 3) } ?? "-", fmt(pps, 6), fmt(r.values_per_second, 4), fmt(r.ns_per_value, 3), String(r.bytes_per_filter), String(r.refits), fmt(r.peaks_per_row, 5), String(r.peak_stride), r.kernels, pinnedCPU.map(String.init) ?? "any"])
        print(t.render())
    }
}

extension TailSelection: ExpressibleByArgument {}
extension RowTransformKind: ExpressibleByArgument {}

/// Pins the calling thread to the CPU it is running on (`saliency_pin_to_current_cpu`, Linux);
/// returns that CPU, or nil where this is not possible. For single-core measurements.
func pinToCurrentCPU() -> Int? {
    let cpu = saliency_pin_to_current_cpu()
    return cpu >= 0 ? Int(cpu) : nil
}
