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
    /// File size after the last complete line: a failed append is cut back to it, so a torn
    /// line never stays in the file for the next append to land on.
    private var goodSize: off_t = 0
    /// A failed append could not be cut back (ftruncate failed too): repair before the next one.
    private var needsRepair = false
    private var dirty = false
    private var lastSync = ContinuousClock.now
    let syncInterval: Duration = .milliseconds(50)
    private let syncQueue = DispatchQueue(label: "saliencyd.alertlog.sync")
    private let syncing = SyncFlag()
    private(set) var nextSequence: UInt64 = 1
    /// What start-up found (for the log).
    private(set) var recoveryNote: String?
    /// Appends that did not reach the file (disk full, I/O error), and the last reason. Such an
    /// alert was still published live, but `entries` never serves it: the log holds only what is
    /// on disk, so `alerts --since` answers the same before and after a restart.
    private(set) var failures: UInt64 = 0
    private(set) var lastError: String?

    /// Largest sequence number accepted from the file (2^53: exact as a JSON number everywhere).
    static let maxSequence: UInt64 = 1 << 53
    /// Longest line accepted from the file (alerts are ~1 KiB).
    static let maxLineBytes = 64 * 1024

    init(directory: String, maxEntries: Int) throws(SaliencyError) {
        self.path = directory + "/alerts.jsonl"
        self.maxEntries = maxEntries
        try load()
        try openForAppend()
    }

    deinit {
        syncQueue.sync {}
        if fd >= 0 { fdatasync(fd); close(fd) }
    }

    private func openForAppend() throws(SaliencyError) {
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SaliencyError(.io, "cannot open alert log \(path): \(String(cString: strerror(errno)))") }
        goodSize = lseek(fd, 0, SEEK_END)
    }

    /// The sequence number of one alert-log line, or nil when the line is not a JSON object with
    /// an integer `seq` in 1...`maxSequence` (or is longer than `maxLineBytes`). Never traps.
    static func decodeLine(_ line: ArraySlice<UInt8>) -> UInt64? {
        guard !line.isEmpty, line.count <= maxLineBytes, line.first == UInt8(ascii: "{") else { return nil }
        struct SeqOnly: Decodable { let seq: UInt64 }
        guard let seq = (try? JSONDecoder().decode(SeqOnly.self, from: Data(line)))?.seq,
              seq >= 1, seq <= maxSequence else { return nil }
        return seq
    }

    private func load() throws(SaliencyError) {
        // Mapped, not read: the file is scanned once and only the retained lines are copied.
        guard FileManager.default.fileExists(atPath: path) else { return }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
            throw SaliencyError(.io, "cannot read alert log \(path): \(error.localizedDescription); move it aside to start with an empty log")
        }
        var dropped = 0
        var torn = false
        data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            let bytes = raw.bindMemory(to: UInt8.self)
            var start = 0
            while start < bytes.count {
                guard let nl = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) else {
                    torn = true   // torn last line (crash or failed write mid-append)
                    break
                }
                let line = Array(bytes[start..<nl])
                if let seq = Self.decodeLine(line[...]), seq > (seqs.last ?? 0) {
                    seqs.append(seq)
                    lines.append(line)
                    if seqs.count > 2 * max(maxEntries, 1) { trim() }
                } else {
                    dropped += 1
                }
                start = nl + 1
            }
        }
        if dropped > 0 || torn {
            recoveryNote = "alert log: dropped \(dropped) unreadable or out-of-order line(s)\(torn ? " and a torn last line" : ""); kept \(seqs.count)"
        }
        trim()
        nextSequence = (seqs.last ?? 0) + 1
        // Rewrite without the bad lines so appends start on a clean line.
        if dropped > 0 || torn { try rewrite() }
    }

    private func rewrite() throws(SaliencyError) {
        var out: [UInt8] = []
        out.reserveCapacity(lines.reduce(0) { $0 + $1.count + 1 })
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
    func ensureSequence(atLeast floor: UInt64) { nextSequence = max(nextSequence, min(floor, Self.maxSequence)) }

    func setMaxEntries(_ n: Int) { maxEntries = n }

    /// Appends one alert (must carry `seq == nextSequence`) as one line written whole or not at
    /// all: a failed or short write is cut back to the last complete line (and, if even that
    /// fails, repaired before the next append). The sequence number is consumed either way (the
    /// alert is published), but a failed alert is not retained: `entries` serves only what is on disk.
    func append(seq: UInt64, json: [UInt8]) throws(SaliencyError) {
        precondition(seq == nextSequence, "alert sequence out of order")
        nextSequence = seq + 1
        if needsRepair {
            guard ftruncate(fd, goodSize) == 0 else {
                try fail("alert log repair failed (\(String(cString: strerror(errno)))); alert \(seq) not logged")
            }
            needsRepair = false
        }
        var line = json
        line.append(UInt8(ascii: "\n"))
        var err: Int32 = 0
        let written = line.withUnsafeBytes { raw -> Int in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 { if errno == EINTR { continue }; err = errno; break }
                if n == 0 { err = EIO; break }
                off += n
            }
            return off
        }
        guard written == line.count else {
            if written > 0 || err != 0 {
                if ftruncate(fd, goodSize) != 0 { needsRepair = true }
            }
            try fail("alert log write failed after \(written) of \(line.count) bytes: \(String(cString: strerror(err))); alert \(seq) was published but not logged")
        }
        goodSize += off_t(line.count)
        dirty = true
        seqs.append(seq)
        lines.append(json)
        if seqs.count > maxEntries { trim(); try reopenAfterRewrite() }
    }

    private func fail(_ message: String) throws(SaliencyError) -> Never {
        failures &+= 1
        lastError = message
        throw SaliencyError(.io, message)
    }

    private func trim() {
        guard seqs.count > maxEntries else { return }
        let drop = seqs.count - maxEntries / 2
        seqs.removeFirst(drop)
        lines.removeFirst(drop)
    }

    private func reopenAfterRewrite() throws(SaliencyError) {
        do { try rewrite() } catch { try fail("alert log retention rewrite failed: \(error.message)") }
        syncQueue.sync {}   // no background sync may touch the old descriptor after close
        close(fd)
        try openForAppend()
    }

    /// Retained alerts with `seq > since`, oldest first, at most `limit` and at most `maxBytes`
    /// of lines (at least one); and the oldest retained seq (0 if none).
    func entries(since: UInt64, limit: Int, maxBytes: Int = .max) -> ([[UInt8]], UInt64) {
        let oldest = seqs.first ?? 0
        var lo = 0, hi = seqs.count
        while lo < hi { let mid = (lo + hi) / 2; if seqs[mid] <= since { lo = mid + 1 } else { hi = mid } }
        var out: [[UInt8]] = []
        var bytes = 0
        var i = lo
        while i < seqs.count, out.count < limit {
            let n = lines[i].count + 1
            if !out.isEmpty, bytes + n > maxBytes { break }
            out.append(lines[i])
            bytes += n
            i += 1
        }
        return (out, oldest)
    }

    var count: Int { seqs.count }
    /// The newest retained seq (0 if none).
    var lastRetained: UInt64 { seqs.last ?? 0 }
}

/// "A background fdatasync is in flight" (shared with the sync queue).
final class SyncFlag: Sendable {
    let flag = Atomic<Bool>(false)
}
