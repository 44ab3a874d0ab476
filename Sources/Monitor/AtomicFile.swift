import Foundation
import SaliencyCore
#if canImport(Glibc)
import Glibc
#endif

/// Durable file writes: temp file, fsync, rename, fsync the directory (docs/operations.md).
enum AtomicFile {
    static func write(_ bytes: [UInt8], to path: String) throws(SaliencyError) {
        let dir = (path as NSString).deletingLastPathComponent
        let tmp = "\(path).tmp.\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SaliencyError(.io, "cannot create \(tmp): \(String(cString: strerror(errno)))") }
        var ok = true
        bytes.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 { if errno == EINTR { continue }; ok = false; break }
                off += n
            }
        }
        let err = errno
        if ok && fsync(fd) != 0 { ok = false }
        close(fd)
        guard ok else {
            unlink(tmp)
            throw SaliencyError(.io, "writing \(tmp) failed: \(String(cString: strerror(err)))")
        }
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw SaliencyError(.io, "rename \(tmp) → \(path) failed: \(String(cString: strerror(e)))")
        }
        syncDirectory(dir)
    }

    static func syncDirectory(_ dir: String) {
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }

    static func ensureDirectory(_ dir: String) throws(SaliencyError) {
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw SaliencyError(.io, "cannot create state directory '\(dir)': \(error.localizedDescription); set state.directory or --state-dir to a writable path")
        }
    }
}
