import Foundation
import SaliencyCore
#if canImport(Glibc)
import Glibc
#endif

/// Public doors into this module's internal decoders, **for the libFuzzer targets in `Fuzz/`**
/// (docs/fuzzing.md). The daemon and `saliencyctl` never call them. Each one is a thin wrapper
/// that feeds hostile bytes to the decoder exactly as the daemon does for its files; the only
/// acceptable outcomes are a value or a thrown `SaliencyError` (a trap, hang or runaway
/// allocation is a finding).
public enum FuzzEntryPoints {
    /// `AlertLog.decodeLine`: the sequence number of one `alerts.jsonl` line, or nil.
    public static func decodeAlertLine(_ line: [UInt8]) -> UInt64? {
        AlertLog.decodeLine(line[...])
    }

    /// What `loadAlertLog` found.
    public struct AlertLogSummary: Sendable, Hashable {
        public var retained: Int
        public var nextSequence: UInt64
        public var recovered: Bool
    }

    /// Per-process scratch directory for `loadAlertLog` (tmpfs: no disk wear, fsync is cheap).
    public static let alertLogDirectory: String = {
        let dir = "/dev/shm/saliencyd-fuzz-\(getpid())"
        mkdir(dir, 0o700)
        return dir
    }()

    /// Writes `bytes` as `<alertLogDirectory>/alerts.jsonl` and opens it as the daemon does at
    /// start-up (`AlertLog(directory:maxEntries:)`: scan, drop bad lines, trim, rewrite), then
    /// reads the retained entries back and appends one alert, as the engine would next.
    public static func loadAlertLog(bytes: [UInt8], maxEntries: Int = 100) throws(SaliencyError) -> AlertLogSummary {
        let dir = alertLogDirectory
        let path = dir + "/alerts.jsonl"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SaliencyError(.io, "fuzz: cannot create \(path): \(String(cString: strerror(errno)))") }
        let ok = bytes.withUnsafeBytes { raw -> Bool in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n <= 0 { if n < 0 && errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
        close(fd)
        guard ok else { throw SaliencyError(.io, "fuzz: cannot write \(path)") }
        let log = try AlertLog(directory: dir, maxEntries: maxEntries)
        let (entries, _) = log.entries(since: 0, limit: 1000, maxBytes: 1 << 20)
        // Invariants of what start-up kept: every line decodes, sequence numbers strictly increase.
        var last: UInt64 = 0
        for line in entries {
            guard let seq = AlertLog.decodeLine(line[...]) else { preconditionFailure("alert log retained a line that does not decode") }
            precondition(seq > last, "alert log retained sequence numbers out of order")
            last = seq
        }
        let summary = AlertLogSummary(retained: log.count, nextSequence: log.nextSequence, recovered: log.recoveryNote != nil)
        let seq = log.nextSequence
        try log.append(seq: seq, json: Array("{\"seq\":\(seq),\"status\":\"firing\"}".utf8))
        return summary
    }

    /// A complete snapshot file around `payload`: magic `SALS`, version 1, the payload's length
    /// and FNV-1a-64 checksum (SnapshotStore's format), so fuzzed payloads pass the header checks.
    public static func snapshotFile(payload: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: payload.count + 24)
        for b in SnapshotStore.magic { w.write(b) }
        w.write(SnapshotStore.version)
        w.write(UInt64(payload.count))
        w.write(payload.withUnsafeBytes { fnv1a64($0) })
        var out = w.bytes
        out += payload
        return out
    }

    /// The payload of a snapshot file (after the 24-byte header), or nil if `file` is too short to have one.
    public static func snapshotPayload(file: [UInt8]) -> [UInt8]? {
        file.count >= 24 ? Array(file[24...]) : nil
    }

    /// What `decodeSnapshot` restored.
    public struct SnapshotSummary: Sendable, Hashable {
        public var models: Int
        public var filters: Int
        public var producers: Int
        public var nextAlertSeq: UInt64
    }

    /// `SnapshotStore.decode` on `snapshotFile(payload:)`, then what `saliencyctl state inspect`
    /// does with the result: a report of every filter (for models of at most `reportFilters`).
    public static func decodeSnapshot(payload: [UInt8], configuration: DaemonConfiguration = DaemonConfiguration(),
                                      acceptStoredSettings: Bool, reportFilters: Int = 4096) throws(SaliencyError) -> SnapshotSummary {
        let r = try SnapshotStore.decode(snapshotFile(payload: payload), configuration: configuration, acceptStoredSettings: acceptStoredSettings)
        var filters = 0
        for e in r.engines {
            filters += e.filterCount
            if e.filterCount <= reportFilters {
                _ = e.tailCensus()
            }
        }
        return SnapshotSummary(models: r.engines.count, filters: filters, producers: r.producers.count, nextAlertSeq: r.nextAlertSeq)
    }
}
