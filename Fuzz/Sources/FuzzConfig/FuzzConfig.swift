// libFuzzer target: configuration files (TOML), on the path the daemon uses for files:
// DaemonConfiguration.parse(contents:source:) then validate(); a valid configuration is then
// used as the daemon uses it at start (warnings, effective summary, restart comparison).
// Acceptable: a configuration or a thrown SaliencyError.
import SaliencyCore
import SaliencyMonitor

#if canImport(Glibc)
import Glibc
#endif

/// KNOWN FINDINGS (Fuzz/regressions/FuzzConfig/, docs/fuzzing.md): toml++ 3.4.0 inside TOMLKit
/// aborts the process on `TOML_ASSERT_ASSUME` preconditions (SwiftPM builds it without NDEBUG)
/// for malformed input:
///   - a table header whose first key character is not a bare-key character or quote
///     (`[=`, `[[[1]]]`, `[` + newline): `parser::parse_key()`, toml.hpp:15481;
///   - an array element that starts with a value terminator (`g=[}`): `parser::parse_value()`,
///     toml.hpp:14994;
///   - a date-time whose `T` is not followed by a digit (`y=1979-05-27T:`): `parser::parse_time()`,
///     toml.hpp:14790.
/// Until saliencyd refuses such files before toml++ sees them, inputs of these shapes are skipped
/// so that the fuzzer looks for other bugs instead of re-finding these: table headers as above,
/// any value that starts with `[` or `{` (arrays, inline tables: the configuration has neither),
/// and any value that starts like a date or time (4 digits then `-`, or 2 digits then `:`).
/// FUZZ_CONFIG_NO_SKIP=1 fuzzes without the skip (to check a fix, or to enumerate more sites with
/// `-fork=1 -ignore_crashes=1`).
func hitsKnownTOMLAbort(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
    func isBare(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x5F || c == 0x2D
    }
    func isDigit(_ i: Int) -> Bool { i < b.count && b[i] >= 0x30 && b[i] <= 0x39 }
    func skipBlanks(_ i: inout Int) { while i < b.count, b[i] == 0x20 || b[i] == 0x09 { i += 1 } }
    // Values: after every `=` (also inside strings: skipping too much is harmless).
    for (eq, c) in b.enumerated() where c == UInt8(ascii: "=") {
        var i = eq + 1
        skipBlanks(&i)
        guard i < b.count else { break }
        if b[i] == UInt8(ascii: "[") || b[i] == UInt8(ascii: "{") { return true }
        if isDigit(i), isDigit(i + 1) {
            if i + 2 < b.count, b[i + 2] == UInt8(ascii: ":") { return true }
            if isDigit(i + 2), isDigit(i + 3), i + 4 < b.count, b[i + 4] == UInt8(ascii: "-") { return true }
        }
    }
    // Table headers: at the start of a line.
    var lineStart = b.count >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF ? 3 : 0
    while lineStart < b.count {
        var i = lineStart
        skipBlanks(&i)
        if i < b.count, b[i] == UInt8(ascii: "[") {
            i += 1
            skipBlanks(&i)
            if i < b.count, b[i] == UInt8(ascii: "[") { i += 1; skipBlanks(&i) }
            if i < b.count {
                let c = b[i]
                if !(isBare(c) || c == UInt8(ascii: "\"") || c == UInt8(ascii: "'") || c == UInt8(ascii: "]")) { return true }
            }
        }
        guard let nl = b[lineStart...].firstIndex(of: 0x0A) else { break }
        lineStart = nl + 1
    }
    return false
}

let skipKnown = getenv("FUZZ_CONFIG_NO_SKIP") == nil

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let buffer = UnsafeBufferPointer(start: data, count: size)
    if skipKnown, hitsKnownTOMLAbort(buffer) { return -1 }   // -1: not added to the corpus
    let bytes = Array(buffer)
    guard let c = try? DaemonConfiguration.parse(contents: bytes, source: "fuzz") else { return 0 }
    guard (try? c.validate()) != nil else { return 0 }
    _ = c.warnings
    _ = c.effectiveSummary
    _ = c.restartRequired(comparedTo: DaemonConfiguration())
    return 0
}
