// libFuzzer target: snapshot files. The input is the PAYLOAD; the harness wraps it in a header
// with the right length and FNV-1a-64 checksum (FuzzEntryPoints.snapshotFile), so the fuzzer
// explores the structure behind the checksum instead of failing it. Decoded as
// `saliencyctl state inspect` does (stored settings accepted, every filter reported), then as
// the daemon does against the default configuration.
// Acceptable: a value or a thrown SaliencyError.
import SaliencyCore
import SaliencyMonitor

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let payload = Array(UnsafeBufferPointer(start: data, count: size))
    guard (try? FuzzEntryPoints.decodeSnapshot(payload: payload, acceptStoredSettings: true)) != nil else { return 0 }
    _ = try? FuzzEntryPoints.decodeSnapshot(payload: payload, acceptStoredSettings: false)
    return 0
}
