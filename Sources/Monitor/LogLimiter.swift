import Logging

/// Rate limits the log lines a peer can cause (docs/security.md): per *kind* of event (sequence
/// gap, new producer, rejected input, refused schema, …) at most `burst` lines per minute reach
/// the log; the others are counted, and once the minute is over one line says how many of that
/// kind were suppressed. A flood of 200,000 bad frames therefore costs a few dozen lines, not
/// 22 MB of journal, and nothing is hidden: the count is in the log, in `status`
/// (`log_suppressed`) and in `saliencyd_log_lines_suppressed_total`.
///
/// Owned by the engine thread (not Sendable). O(1) per event.
final class LogLimiter {
    struct Window { var start: ContinuousClock.Instant; var lines: Int; var suppressed: UInt64 }

    private(set) var burst: Int
    let period: Duration
    private var windows: [String: Window] = [:]
    /// Lines suppressed since start, over all kinds.
    private(set) var suppressedTotal: UInt64 = 0
    /// Called with the number of lines suppressed (metrics).
    var onSuppressed: (UInt64) -> Void = { _ in }

    init(burst: Int, period: Duration = .seconds(60)) {
        self.burst = burst
        self.period = period
    }

    func setBurst(_ b: Int) { burst = b }

    /// Logs `message` at `level` unless `kind` already used its lines this period.
    func log(_ logger: Logger, _ level: Logger.Level, kind: String, _ message: @autoclosure () -> Logger.Message,
             metadata: @autoclosure () -> Logger.Metadata = [:], now: ContinuousClock.Instant = .now) {
        guard logger.logLevel <= level else { return }
        var w = windows[kind] ?? Window(start: now, lines: 0, suppressed: 0)
        if now - w.start >= period {
            report(logger, kind: kind, w)
            w = Window(start: now, lines: 0, suppressed: 0)
        }
        if w.lines < burst {
            w.lines += 1
            windows[kind] = w
            logger.log(level: level, message(), metadata: metadata())
        } else {
            w.suppressed &+= 1
            windows[kind] = w
            suppressedTotal &+= 1
            onSuppressed(1)
        }
    }

    /// Reports kinds whose period ended with suppressed lines (called periodically, so a flood
    /// that stops is still summed up). Forgets idle kinds, so the table stays small.
    func flush(_ logger: Logger, now: ContinuousClock.Instant = .now) {
        for (kind, w) in windows where now - w.start >= period {
            report(logger, kind: kind, w)
            windows[kind] = nil
        }
    }

    private func report(_ logger: Logger, kind: String, _ w: Window) {
        guard w.suppressed > 0 else { return }
        logger.warning("suppressed \(w.suppressed) '\(kind)' log lines (more than \(burst) per \(period.components.seconds) s); counts are in status and metrics",
                       metadata: ["kind": "\(kind)", "suppressed": "\(w.suppressed)"])
    }
}
