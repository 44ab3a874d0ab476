// libFuzzer target: snapshot files. The input is the PAYLOAD; the harness wraps it in a header
// with the right length and FNV-1a-64 checksum (FuzzEntryPoints.snapshotFile), so the fuzzer
// explores the structure behind the checksum instead of failing it. Decoded as
// `saliencyctl state inspect` does (stored settings accepted, every filter reported), then as
// the daemon does against the default configuration.
// Acceptable: a value or a thrown SaliencyError.
import SaliencyCore
import SaliencyMonitor

#if canImport(Glibc)
import Glibc
#endif

/// KNOWN FINDING (Fuzz/regressions/FuzzSnapshot/, docs/fuzzing.md): `FilterBank(restoring:)`
/// converts the stored filter count and ring capacity (u64) with `Int(_:)`, which traps for
/// values ≥ 2^63 (FilterBank+Snapshot.swift, "filter count" / "ring capacity"). Until that is
/// fixed, payloads whose first model's bank blob carries such a value are skipped, so that the
/// fuzzer looks for other bugs. FUZZ_SNAPSHOT_NO_SKIP=1 fuzzes without the skip.
func hitsKnownBankCountTrap(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
    var o = 0
    func u64(_ at: Int) -> UInt64? {
        guard at >= 0, at <= b.count - 8 else { return nil }
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(b[at + i]) << (8 * UInt64(i)) }
        return v
    }
    func skipBlob() -> Bool {
        guard let n = u64(o), n <= UInt64(b.count - o - 8) else { return false }
        o += 8 + Int(n)
        return true
    }
    guard skipBlob() else { return false }          // header JSON
    o += 4                                           // model count
    // Every model: schema, bank (checked), tracker, active, model alert, layer extremes.
    while o < b.count {
        guard skipBlob() else { return false }      // schema
        guard let n = u64(o), n <= UInt64(b.count - o - 8) else { return false }
        let bank = o + 8
        if n >= 20, let k = u64(bank + 4), let cap = u64(bank + 12), k >= 1 << 63 || cap >= 1 << 63 { return true }
        o = bank + Int(n)
        for _ in 0..<4 { guard skipBlob() else { return false } }
    }
    return false
}

let skipKnown = getenv("FUZZ_SNAPSHOT_NO_SKIP") == nil

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let buffer = UnsafeBufferPointer(start: data, count: size)
    if skipKnown, hitsKnownBankCountTrap(buffer) { return -1 }   // -1: not added to the corpus
    let payload = Array(buffer)
    guard (try? FuzzEntryPoints.decodeSnapshot(payload: payload, acceptStoredSettings: true)) != nil else { return 0 }
    _ = try? FuzzEntryPoints.decodeSnapshot(payload: payload, acceptStoredSettings: false)
    return 0
}
