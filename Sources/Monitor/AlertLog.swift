import Foundation
import SaliencyCore
import Synchronization
import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// The durable, bounded alert log: one JSON alert per line in `<state>/alerts.jsonl`.
///
/// Every alert is appended (`write`, into the kernel's page cache) **before** it is published, so
/// a daemon crash — even `kill -9` — loses no alert a subscriber saw: it can always fetch 1…N that
/// are still retained. `fdatasync` runs off the engine thread, at most every `syncInterval`
/// (default 50 ms) while there are unsynced appends, and at shutdown: a power loss or kernel crash
/// can lose the alerts of the last ≤ 50 ms. (A synchronous `fdatasync` per alert cost 1–10 ms,
/// far above the 1 ms arrival→publish budget.) Retention: when more than
/// `maxEntries` are held, the oldest half is dropped by an atomic rewrite. Sequence numbers are
/// monotonic across restarts (the next one is the last logged + 1). A torn last line (crash
/// mid-append) is cut off at start-up and reported.
final class AlertLog {
    let path: String
    private(set) var maxEntries: Int
    private var seqs: [UInt64] = []
    private var lines: [[UInt8]] = []
    private var fd: Int32 = -1
    private var dirty = false
    private var lastSync = ContinuousClock.now
    let syncInterval: Duration = .milliseconds(50)
    private let syncQueue = DispatchQueue(label: "saliencyd.alertlog.sync")
    private let syncing = SyncFlag()
    private(set) var nextSequence: UInt64 = 1
    /// What start-up found (for the log).
    private(set) var recoveryNote: String?

    init(directory: String, maxEntries: Int) throws(SaliencyError) {
        self.path = directory + "/alerts.jsonl"
        self.maxEntries = maxEntries
        try load()
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SaliencyError(.io, "cannot open alert log \(path): \(String(cString: strerror(errno)))") }
    }

    deinit {
        syncQueue.sync {}
        if fd >= 0 { fdatasync(fd); close(fd) }
    }

    private func load() throws(SaliencyError) {
        guard let data = FileManager.default.contents(atPath: path) else { return }
        let bytes = [UInt8](data)
        var start = 0
        var good = 0
        var dropped = 0
        while start < bytes.count {
            guard let nl = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) else {
                dropped += 1   // torn last line
                break
            }
            let line = Array(bytes[start..<nl])
            if let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any], let seq = (obj["seq"] as? NSNumber)?.uint64Value,
               seq >= (seqs.last.map { $0 + 1 } ?? 0) {
                seqs.append(seq)
                lines.append(line)
                good = nl + 1
            } else {
                dropped += 1
                good = nl + 1
            }
            start = nl + 1
        }
        if dropped > 0 {
            recoveryNote = "alert log: dropped \(dropped) unreadable or torn line(s); kept \(seqs.count)"
            // Rewrite without the bad lines so appends start on a clean line.
            try rewrite()
        } else if good < bytes.count {
            try rewrite()
        }
        nextSequence = (seqs.last ?? 0) + 1
        trim()
    }

    private func rewrite() throws(SaliencyError) {
        var out: [UInt8] = []
        for l in lines { out += l; out.append(UInt8(ascii: "\n")) }
        try AtomicFile.write(out, to: path)
    }

    /// Syncs pending appends to disk on a background queue if the interval has passed (engine loop).
    func syncIfDue(now: ContinuousClock.Instant = .now) {
        guard dirty, now - lastSync >= syncInterval else { return }
        guard syncing.flag.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        dirty = false
        lastSync = now
        let f = fd
        let flag = syncing
        syncQueue.async {
            fdatasync(f)
            flag.flag.store(false, ordering: .releasing)
        }
    }

    /// Syncs now, on the calling thread (shutdown).
    func syncNow() {
        syncQueue.sync {}
        if fd >= 0 { fdatasync(fd) }
        dirty = false
    }

    /// Raises the next sequence number to at least `floor` (e.g. after restoring a snapshot that saw later alerts).
    func ensureSequence(atLeast floor: UInt64) { nextSequence = max(nextSequence, floor) }

    func setMaxEntries(_ n: Int) { maxEntries = n }

    /// Appends one alert (must carry `seq == nextSequence`) durably.
    func append(seq: UInt64, json: [UInt8]) throws(SaliencyError) {
        precondition(seq == nextSequence, "alert sequence out of order")
        nextSequence = seq + 1
        seqs.append(seq)
        lines.append(json)
        var line = json
        line.append(UInt8(ascii: "\n"))
        let ok = line.withUnsafeBytes { raw -> Bool in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 { if errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
        dirty = true
        if !ok { throw SaliencyError(.io, "alert log write failed: \(String(cString: strerror(errno)))") }
        if seqs.count > maxEntries { trim(); try reopenAfterRewrite() }
    }

    private func trim() {
        guard seqs.count > maxEntries else { return }
        let drop = seqs.count - maxEntries / 2
        seqs.removeFirst(drop)
        lines.removeFirst(drop)
    }

    private func reopenAfterRewrite() throws(SaliencyError) {
        try rewrite()
        syncQueue.sync {}   // no background sync may touch the old descriptor after close
        close(fd)
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SaliencyError(.io, "cannot reopen alert log \(path)") }
    }

    /// Retained alerts with `seq > since`, oldest first, at most `limit`; and the oldest retained seq (0 if none).
    func entries(since: UInt64, limit: Int) -> ([[UInt8]], UInt64) {
        let oldest = seqs.first ?? 0
        var lo = 0, hi = seqs.count
        while lo < hi { let mid = (lo + hi) / 2; if seqs[mid] <= since { lo = mid + 1 } else { hi = mid } }
        return (Array(lines[lo..<min(seqs.count, lo + limit)]), oldest)
    }

    var count: Int { seqs.count }
}

/// "A background fdatasync is in flight" (shared with the sync queue).
final class SyncFlag: Sendable {
    let flag = Atomic<Bool>(false)
}
