import Foundation
import Prometheus
import Synchronization

/// `process_*` metrics as Prometheus' client libraries define them, read from /proc at scrape
/// time (`MetricsServer.beforeScrape`; any thread, several scrapes at once are fine).
final class ProcessMetrics: Sendable {
    typealias C = MetricCatalog
    private let cpu: Counter
    private let rss, vsz, openFDs, maxFDs, startTime: Gauge
    /// CPU seconds already added to the counter (a Prometheus counter only increments).
    private let cpuExported = Mutex<Double>(0)
    private static let ticks = Double(max(1, sysconf(Int32(_SC_CLK_TCK))))
    private static let pageSize = Double(max(1, sysconf(Int32(_SC_PAGESIZE))))

    init(registry r: PrometheusCollectorRegistry) {
        cpu = C.cpu.counter(r)
        rss = C.rss.gauge(r)
        vsz = C.vsz.gauge(r)
        openFDs = C.openFDs.gauge(r)
        maxFDs = C.maxFDs.gauge(r)
        startTime = C.startTime.gauge(r)
        if let s = Self.stat(), let boot = Self.bootTime() { startTime.set(boot + s.startTicks / Self.ticks) }
        update()
    }

    /// Fields of /proc/self/stat (proc(5)): utime 14, stime 15, starttime 22, vsize 23, rss 24.
    struct Stat { var utime, stime, startTicks, vsize, rssPages: Double }

    static func stat() -> Stat? {
        guard let text = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // After "pid (comm)" the fields start at 3 (state); comm may contain spaces and ')'.
        let f = text[text.index(after: close)...].split(separator: " ")
        func field(_ n: Int) -> Double? { n - 3 < f.count ? Double(f[n - 3]) : nil }
        guard let ut = field(14), let st = field(15), let start = field(22), let vs = field(23), let rs = field(24) else { return nil }
        return Stat(utime: ut, stime: st, startTicks: start, vsize: vs, rssPages: rs)
    }

    /// `btime` of /proc/stat: boot time in Unix seconds.
    static func bootTime() -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("btime ") {
            return Double(line.dropFirst(6).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    func update() {
        if let s = Self.stat() {
            let seconds = (s.utime + s.stime) / Self.ticks
            cpuExported.withLock { done in
                if seconds > done { cpu.increment(by: seconds - done); done = seconds }
            }
            rss.set(s.rssPages * Self.pageSize)
            vsz.set(s.vsize)
        }
        if let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            openFDs.set(Int64(fds.count))
        }
        var lim = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 {
            maxFDs.set(lim.rlim_cur == rlim_t.max ? Double(Int64.max) : Double(lim.rlim_cur))
        }
    }
}
