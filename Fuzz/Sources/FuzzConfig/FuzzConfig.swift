// libFuzzer target: configuration files (TOML), on the path the daemon uses for files:
// DaemonConfiguration.parse(contents:source:) then validate(); a valid configuration is then
// used as the daemon uses it at start (warnings, effective summary, restart comparison).
// Acceptable: a configuration or a thrown SaliencyError.
// (Until c80fd08 the parser was toml++ inside TOMLKit, which aborted on malformed input:
// Fuzz/regressions/FuzzConfig/ keeps those reproducers.)
import SaliencyCore
import SaliencyMonitor

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let c = try? DaemonConfiguration.parse(contents: bytes, source: "fuzz") else { return 0 }
    guard (try? c.validate()) != nil else { return 0 }
    _ = c.warnings
    _ = c.effectiveSummary
    _ = c.restartRequired(comparedTo: DaemonConfiguration())
    return 0
}
