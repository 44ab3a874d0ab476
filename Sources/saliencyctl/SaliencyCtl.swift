import ArgumentParser
import Foundation
import SaliencyCore

@main
struct SaliencyCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "saliencyctl",
        abstract: "Parameter-saliency statistics offline, and the saliencyd daemon's client.",
        discussion: """
        Offline commands work on .npy files (float32/float64, C order) and schema JSON files.
        Online commands talk to a running saliencyd over ZeroMQ (docs/protocol.md).
        Every command takes --json for machine-readable output.
        """,
        version: "saliencyctl \(SaliencyVersion.string)",
        subcommands: [Fit.self, Spot.self, Analyze.self, Bench.self, Status.self, Top.self, FilterCmd.self, Alerts.self, Replay.self, Sink.self, Keygen.self, State.self]
    )
}

/// Common `--json` flag.
struct OutputOptions: ParsableArguments {
    @Flag(name: .long, help: "Print JSON (one document, or JSON Lines for per-row output).")
    var json = false
}

enum IO {
    static func readBytes(_ path: String) throws -> [UInt8] {
        guard let d = FileManager.default.contents(atPath: path) else {
            throw InputError("cannot read '\(path)': no such file or not readable")
        }
        return [UInt8](d)
    }

    /// A 1-D series from `.npy` or a text file with one number per line (blank lines and `#` comments
    /// skipped). NaN/±inf are always refused; negative values unless `allowNegative` (saliencies are
    /// magnitudes). Errors name the position.
    static func readSeries(_ path: String, allowNegative: Bool = false) throws -> [Double] {
        let x = try readSeriesValues(path)
        if let i = x.firstIndex(where: { !$0.isFinite }) {
            throw InputError("'\(path)' value \(i) is \(x[i]); NaN and ±inf are not allowed (non_finite)")
        }
        if !allowNegative, let i = x.firstIndex(where: { $0 < 0 }) {
            throw InputError("'\(path)' value \(i) is \(x[i]); saliencies are magnitudes ≥ 0 (negative). Pass --allow-negative for a generic series")
        }
        return x
    }

    static func readSeriesValues(_ path: String) throws -> [Double] {
        let bytes = try readBytes(path)
        if bytes.first == 0x93 {
            let a = try NPYArray.parse(bytes)
            guard a.shape.count == 1 || a.rows == 1 || a.columns == 1 else {
                throw InputError("'\(path)' has shape \(a.shape); a series must be 1-D")
            }
            return a.values.map(Double.init)
        }
        var out: [Double] = []
        for (i, line) in String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty || t.hasPrefix("#") { continue }
            guard let v = Double(t) else { throw InputError("'\(path)' line \(i + 1): '\(t)' is not a number") }
            out.append(v)
        }
        return out
    }

    static func readMatrix(_ path: String) throws -> NPYArray {
        let a = try NPYArray.parse(readBytes(path))
        guard a.shape.count == 2 else { throw InputError("'\(path)' has shape \(a.shape); expected 2-D [rows, K]") }
        return a
    }

    static func readSchema(_ path: String) throws -> ModelSchema {
        let data = Data(try readBytes(path))
        do {
            return try JSONDecoder().decode(ModelSchema.self, from: data)
        } catch let e as SaliencyError {
            throw InputError("schema '\(path)': \(e.message)")
        } catch {
            throw InputError("schema '\(path)' is not valid schema JSON ({\"model\": ..., \"layers\": [{\"name\": ..., \"filters\": N}]}): \(error)")
        }
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return e
    }()

    static func printJSON<T: Encodable>(_ v: T) throws {
        print(String(decoding: try encoder.encode(v), as: UTF8.self))
    }
}

/// Fixed-width text tables for humans.
struct Table {
    var headers: [String]
    var rows: [[String]] = []
    func render() -> String {
        var w = headers.map(\.count)
        for r in rows { for (i, c) in r.enumerated() { w[i] = max(w[i], c.count) } }
        func line(_ r: [String]) -> String {
            r.enumerated().map { i, c in c.padding(toLength: w[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
        }
        return ([line(headers)] + rows.map(line)).joined(separator: "\n")
    }
}

func fmt(_ x: Double, _ digits: Int = 6) -> String {
    if x.isInfinite { return x > 0 ? "inf" : "-inf" }
    if x.isNaN { return "nan" }
    return String(format: "%.\(digits)g", x)
}

/// Bad input found while running (a file, a value): printed as `Error: …` with exit status 1,
/// without the usage text that ArgumentParser adds for argument mistakes (`ValidationError`).
struct InputError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
