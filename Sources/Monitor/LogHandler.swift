import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// A stderr log handler that journald understands: with `$JOURNAL_STREAM` set, each line starts
/// with a syslog priority `<N>` and no timestamp (journald adds one); otherwise an ISO-8601
/// timestamp and the level. Metadata follows as `key=value`, sorted.
public struct DaemonLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    let label: String
    let journald: Bool

    public init(label: String, level: Logger.Level, journald: Bool = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil) {
        self.label = label
        self.logLevel = level
        self.journald = journald
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    static func priority(_ l: Logger.Level) -> Int {
        switch l {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` via gmtime_r (a Foundation formatter per line cost ~100 µs).
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var tm = tm()
        gmtime_r(&t, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let ms = Int(ts.tv_nsec / 1_000_000)
        let msText = ms < 10 ? "00\(ms)" : ms < 100 ? "0\(ms)" : "\(ms)"
        return "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))T\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec)).\(msText)Z"
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let m = event.metadata { all.merge(m) { $1 } }
        let meta = all.sorted { $0.key < $1.key }.map { k, v in
            let s = "\(v)"
            return s.contains(" ") || s.isEmpty ? "\(k)=\"\(s)\"" : "\(k)=\(s)"
        }.joined(separator: " ")
        let line: String
        if journald {
            line = "<\(Self.priority(event.level))>\(event.message)\(meta.isEmpty ? "" : " " + meta)\n"
        } else {
            let ts = Self.timestamp()
            line = "\(ts) \(event.level) \(label): \(event.message)\(meta.isEmpty ? "" : " " + meta)\n"
        }
        FileHandle.standardError.write(Data(line.utf8))
    }
}
