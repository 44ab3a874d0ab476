// libFuzzer target: the alert log `alerts.jsonl` read at start-up. The whole input is decoded as
// one line (AlertLog.decodeLine), then written as the file and loaded as the daemon does
// (scan, drop bad lines, trim, rewrite, reopen, append one alert) in a per-process tmpfs directory.
// maxEntries is 8 (the configuration's minimum is 100) so that retention trimming is reached.
// Acceptable: a value or a thrown SaliencyError.
import SaliencyCore
import SaliencyMonitor

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let seq = FuzzEntryPoints.decodeAlertLine(bytes) {
        precondition(seq >= 1 && seq <= 1 << 53, "decodeLine returned \(seq)")
    }
    let maxEntries = 8
    if let s = try? FuzzEntryPoints.loadAlertLog(bytes: bytes, maxEntries: maxEntries) {
        precondition(s.retained <= maxEntries, "start-up kept \(s.retained) lines, more than max_entries = \(maxEntries)")
    }
    return 0
}
