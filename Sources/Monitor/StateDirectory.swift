import Foundation
import Logging
import SaliencyCore
#if canImport(Glibc)
import Glibc
#endif

/// Exclusive ownership and start-up hygiene of the state directory (docs/operations.md).
///
/// - **Lock**: `<state>/lock` is held with `flock(LOCK_EX)` for the life of the process and
///   names the holder's pid. A second daemon on the same directory would overwrite the first
///   one's snapshots with older state; it refuses to start instead, naming the pid. The kernel
///   drops the lock when the process dies, however it dies, so a crash never leaves it stale.
/// - **Stale temporary files** (`snapshot.bin.new`, `*.tmp.<pid>`) that a `kill -9` during a
///   snapshot left behind are removed (nothing else may write here while the lock is held).
/// - A `snapshot.bin` / `snapshot.prev.bin` that is not a regular file is moved aside, so the
///   next snapshot can be installed.
final class StateDirectory {
    let path: String
    private var lockFD: Int32 = -1

    init(path: String) { self.path = path }

    deinit { if lockFD >= 0 { close(lockFD) } }

    /// Takes the lock or throws an error naming the process that holds it.
    func lock() throws(SaliencyError) {
        let file = path + "/lock"
        let fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw SaliencyError(.io, "cannot open the state directory lock \(file): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            var buf = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buf, 31, 0)
            close(fd)
            let holder = n > 0 ? String(decoding: buf[..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
            if e == EWOULDBLOCK {
                throw SaliencyError(.io, "state directory \(path) is in use by another saliencyd (pid \(holder)); two daemons on one state directory would overwrite each other's learned state. Stop the other one, or give this one its own --state-dir")
            }
            throw SaliencyError(.io, "cannot lock \(file): \(String(cString: strerror(e)))")
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        lockFD = fd
    }

    /// Removes stale temporary files and moves aside snapshot paths that are not regular files.
    /// Returns what it did, one line each (for the log).
    func tidy() -> [String] {
        var done: [String] = []
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        for name in names where Self.isStaleTemporary(name) {
            let p = path + "/" + name
            var st = stat()
            guard lstat(p, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
            if unlink(p) == 0 { done.append("removed stale temporary file \(name) (\(st.st_size) bytes) left by an interrupted snapshot") }
        }
        for name in ["snapshot.bin", "snapshot.prev.bin", "snapshot.bin.new"] {
            let p = path + "/" + name
            var st = stat()
            guard lstat(p, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG else { continue }
            let aside = "\(p).rejected-\(Int(Date().timeIntervalSince1970))"
            if rename(p, aside) == 0 {
                done.append("\(name) is not a regular file; moved aside as \((aside as NSString).lastPathComponent) so snapshots can be written")
            } else {
                done.append("\(name) is not a regular file and could not be moved aside (\(String(cString: strerror(errno)))); snapshots will fail until it is removed")
            }
        }
        return done
    }

    /// `snapshot.bin.new` and `<anything>.tmp.<digits>` (AtomicFile's temporary names).
    static func isStaleTemporary(_ name: String) -> Bool {
        if name == "snapshot.bin.new" { return true }
        guard let r = name.range(of: ".tmp.", options: .backwards) else { return false }
        let tail = name[r.upperBound...]
        return !tail.isEmpty && tail.allSatisfy(\.isASCII) && tail.allSatisfy(\.isNumber)
    }
}
