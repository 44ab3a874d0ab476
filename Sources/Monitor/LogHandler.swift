import Foundation
import Logging

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
            let ts = ISO8601DateFormatter.string(from: Date(), timeZone: .gmt, formatOptions: [.withInternetDateTime, .withFractionalSeconds])
            line = "\(ts) \(event.level) \(label): \(event.message)\(meta.isEmpty ? "" : " " + meta)\n"
        }
        FileHandle.standardError.write(Data(line.utf8))
    }
}
