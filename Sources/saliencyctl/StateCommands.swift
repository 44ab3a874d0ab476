import ArgumentParser
import Foundation
import EVTOnline
import SaliencyCore
import SaliencyMonitor

struct State: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Inspect saliencyd's learned state files.", subcommands: [Inspect.self])

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a snapshot file (magic, version, length, checksum, structure) and summarize it.",
            discussion: "Exit 0: the daemon would load it. Exit 1: it would refuse it, with the reason. With --config, also checks that the daemon's [pot] settings match the snapshot's.")
        @Argument(help: "Snapshot file (e.g. /var/lib/saliencyd/snapshot.bin).") var file: String
        @Option(help: "The daemon's configuration file (its [pot] settings must match the snapshot's).") var config: String?
        @OptionGroup var output: OutputOptions

        func run() throws {
            do {
                let cfg = try config.map { (p: String) throws(SaliencyError) in try DaemonConfiguration.load(path: p) }
                let s = try SnapshotInspector.inspect(path: file, configuration: cfg)
                if output.json { try IO.printJSON(s); return }
                print("\(s.file): \(s.bytes) bytes, version \(s.version), checksum OK; next alert seq \(s.next_alert_seq); \(s.producers) producer(s)")
                var t = Table(headers: ["model", "quantity", "fingerprint", "filters", "layers", "phase", "rows", "refits", "firing", "extremes", "level/q/n_cal", "watches", "transform", "tail models"])
                for m in s.models {
                    t.rows.append([m.model, m.quantity, m.fingerprint, String(m.filters), String(m.layers), m.phase, String(m.rows), String(m.refits), String(m.firing), String(m.extremes), "\(m.level)/\(m.q)/\(m.calibration)", m.watched_tails, m.transform,
                                   m.tails.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")])
                }
                print(t.rows.isEmpty ? "no models" : t.render())
            } catch let e as SaliencyError {
                FileHandle.standardError.write(Data("saliencyctl: '\(file)' would be refused: \(e.code): \(e.message)\n".utf8))
                throw ExitCode.failure
            }
        }
    }
}

struct Spot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream one series through SPOT (Siffer et al. 2017): calibration, then normal / peak / extreme per value.",
        discussion: "FILE is a 1-D .npy or a text file with one number per line.")
    @Argument(help: "The series.") var file: String
    @Option(name: .customLong("init"), help: "Calibration size n_cal.") var initCount: Int
    @Option(help: "Risk q.") var q: Double
    @Option(help: "Threshold quantile level.") var level: Double = 0.98
    @Option(help: "DSPOT drift window d (0 = off).") var drift = 0
    @Option(name: .customLong("max-peaks"), help: "Ring capacity (8…65536; the default keeps every peak of series up to ~650k values at level 0.9).") var maxPeaks = 65_536
    @Flag(help: "Print each extreme value's index (JSON: an `extreme_indices` array).") var listExtremes = false
    @Flag(name: .customLong("allow-negative"), help: "Accept negative values (a generic series rather than saliency magnitudes).") var allowNegative = false
    @OptionGroup var output: OutputOptions

    struct Result: Codable {
        var n: Int; var normal: Int; var peaks: Int; var extreme: Int; var threshold: Double?; var extreme_threshold: Double?
        var shape: Double?; var scale: Double?; var method: String?; var extreme_indices: [Int]?
    }

    func run() throws {
        let x = try IO.readSeries(file, allowNegative: allowNegative)
        guard x.count >= initCount else { throw InputError("'\(file)' has \(x.count) values, fewer than --init \(initCount)") }
        var cfg = POTConfiguration()
        cfg.level = level; cfg.q = q; cfg.calibration = initCount; cfg.driftWindow = drift
        cfg.maxPeaks = maxPeaks; cfg.minPeaks = min(cfg.minPeaks, max(3, Int(Double(initCount) * (1 - level))))
        var spot: SPOT
        do { spot = try SPOT(configuration: cfg) } catch { throw InputError(error.message) }
        var ex: [Int] = []
        for (i, v) in x.enumerated() where spot.step(v) == .extreme { ex.append(i) }
        let f = spot.fit
        let r = Result(n: x.count, normal: spot.counts.normal, peaks: spot.counts.peaks, extreme: spot.counts.extremes,
                       threshold: spot.threshold, extreme_threshold: spot.extremeThreshold, shape: f?.gpd.shape, scale: f?.gpd.scale,
                       method: f?.method.label, extreme_indices: listExtremes ? ex : nil)
        if output.json { try IO.printJSON(r); return }
        var t = Table(headers: ["n", "normal", "peaks", "extreme", "threshold", "extreme_threshold", "shape", "scale", "method"])
        let th: String = r.threshold.map { fmt($0) } ?? "-"
        let et: String = r.extreme_threshold.map { fmt($0) } ?? "-"
        let sh: String = r.shape.map { fmt($0, 4) } ?? "-"
        let sc: String = r.scale.map { fmt($0, 4) } ?? "-"
        t.rows.append([String(r.n), String(r.normal), String(r.peaks), String(r.extreme), th, et, sh, sc, r.method ?? "-"])
        print(t.render())
        if listExtremes { print("extreme at: " + ex.map(String.init).joined(separator: " ")) }
    }
}
