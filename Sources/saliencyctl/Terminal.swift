import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What saliencyctl needs from a terminal: is it one, its size, a full-screen mode for
/// `top --watch`, and a one-line progress display on stderr. Nothing here writes an escape code
/// to a file descriptor that is not a terminal.
enum Terminal {
    static func isTTY(_ fd: Int32) -> Bool { isatty(fd) == 1 }

    /// Rows and columns of the terminal on `fd` (TIOCGWINSZ); nil if not a terminal or unknown.
    static func size(_ fd: Int32 = STDOUT_FILENO) -> (rows: Int, columns: Int)? {
        var w = winsize()
        guard ioctl(fd, UInt(TIOCGWINSZ), &w) == 0, w.ws_row > 0, w.ws_col > 0 else { return nil }
        return (Int(w.ws_row), Int(w.ws_col))
    }

    static func write(_ s: String, to fd: Int32 = STDOUT_FILENO) {
        var bytes = Array(s.utf8)[...]
        while !bytes.isEmpty {
            #if canImport(Glibc)
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            #else
            let n = bytes.withUnsafeBytes { Darwin.write(fd, $0.baseAddress, $0.count) }
            #endif
            if n < 0 { if errno == EINTR { continue }; return }
            bytes = bytes.dropFirst(n)
        }
    }

    /// `s` cut to `width` characters (a table line wider than the window would wrap and push the
    /// header off the screen).
    static func cut(_ s: String, _ width: Int) -> String { s.count <= width ? s : String(s.prefix(max(0, width))) }
}

/// Signals that end or redraw the full-screen view, recorded by async-signal-safe handlers.
/// (A C signal handler cannot capture context: plain globals of sig_atomic_t width.)
nonisolated(unsafe) private var pendingQuit: sig_atomic_t = 0
nonisolated(unsafe) private var pendingResize: sig_atomic_t = 0

/// The alternate screen of a terminal with the cursor hidden and the keyboard in non-canonical,
/// no-echo mode (so `q` arrives at once), like top(1). `leave()` restores everything; SIGINT,
/// SIGTERM and SIGHUP are caught while it is active, so they end the loop and restore the terminal
/// instead of killing the process with the terminal left in raw mode.
final class FullScreen {
    private var saved: termios?
    private var active = false
    private var previousHandlers: [Int32: sigaction] = [:]

    /// Enters the full-screen mode; nil when stdout is not a terminal (the caller prints plain text).
    static func enter() -> FullScreen? {
        guard Terminal.isTTY(STDOUT_FILENO) else { return nil }
        let s = FullScreen()
        s.start()
        return s
    }

    private func start() {
        pendingQuit = 0
        pendingResize = 0
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGWINCH] {
            var act = sigaction()
            sigemptyset(&act.sa_mask)
            act.sa_flags = 0   // no SA_RESTART: poll() returns EINTR at once
            let handler: @convention(c) (Int32) -> Void = { sig in
                if sig == SIGWINCH { pendingResize = 1 } else { pendingQuit = sig }
            }
            #if os(Linux)
            act.__sigaction_handler.sa_handler = handler
            #else
            act.__sigaction_u.__sa_handler = handler
            #endif
            var old = sigaction()
            sigaction(sig, &act, &old)
            previousHandlers[sig] = old
        }
        if Terminal.isTTY(STDIN_FILENO) {
            var t = termios()
            if tcgetattr(STDIN_FILENO, &t) == 0 {
                saved = t
                t.c_lflag &= ~tcflag_t(ICANON | ECHO)   // ISIG stays on: Ctrl-C is SIGINT, caught above
                withUnsafeMutableBytes(of: &t.c_cc) { cc in
                    cc[Int(VMIN)] = 0
                    cc[Int(VTIME)] = 0
                }
                tcsetattr(STDIN_FILENO, TCSANOW, &t)
            }
        }
        Terminal.write("\u{1B}[?1049h\u{1B}[?25l\u{1B}[H\u{1B}[2J")   // alternate screen, hide cursor, clear
        active = true
    }

    /// Leaves the alternate screen, shows the cursor, restores the keyboard mode and signal handlers.
    func leave() {
        guard active else { return }
        active = false
        Terminal.write("\u{1B}[?25h\u{1B}[?1049l")
        if var t = saved { tcsetattr(STDIN_FILENO, TCSANOW, &t) }
        for (sig, var old) in previousHandlers { sigaction(sig, &old, nil) }
    }

    deinit { leave() }

    /// The signal that asked to quit (SIGINT, SIGTERM, SIGHUP), if any.
    var quitSignal: Int32? { pendingQuit == 0 ? nil : Int32(pendingQuit) }

    /// Draws `lines` from the top-left corner, each cut to the window and cleared to its end;
    /// at most the window's height, so the first lines (summary, header) never scroll away.
    func draw(_ lines: [String]) {
        let (rows, cols) = Terminal.size() ?? (24, 80)
        pendingResize = 0
        var out = "\u{1B}[H"
        for (i, l) in lines.prefix(rows).enumerated() {
            out += Terminal.cut(l, cols) + "\u{1B}[K" + (i + 1 < min(lines.count, rows) ? "\r\n" : "")
        }
        out += "\u{1B}[J"   // clear below (a shorter table than last time)
        Terminal.write(out)
    }

    /// Waits up to `seconds` for a key; returns true when the view should end (`q`, `Q`, Ctrl-C, a
    /// quit signal, or end of input), false on timeout or a resize (redraw now).
    func waitForKey(_ seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while quitSignal == nil {
            if pendingResize != 0 { return false }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return false }
            guard saved != nil else { usleep(UInt32(min(left, 0.1) * 1e6)); continue }
            var p = pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(min(left, 0.25) * 1000) + 1)
            if r > 0 {
                var c: UInt8 = 0
                let n = read(STDIN_FILENO, &c, 1)
                if n == 0 { return true }   // end of input
                if n == 1, c == UInt8(ascii: "q") || c == UInt8(ascii: "Q") || c == 3 { return true }
            }
        }
        return true
    }
}

/// One updating line on stderr for long runs: rows done/total, rate, ETA. Only when stderr is a
/// terminal (a log file or pipe gets nothing); redrawn at most 5 times a second; `finish()` clears it.
struct ProgressLine {
    let label: String
    let total: Int
    let enabled: Bool
    private let start = Date()
    private var lastDraw = Date.distantPast

    init(_ label: String, total: Int, enabled: Bool = Terminal.isTTY(STDERR_FILENO)) {
        self.label = label
        self.total = total
        self.enabled = enabled
    }

    mutating func update(_ done: Int) {
        guard enabled else { return }
        let now = Date()
        guard now.timeIntervalSince(lastDraw) >= 0.2 || done == total else { return }
        lastDraw = now
        let secs = now.timeIntervalSince(start)
        let rate = secs > 0 ? Double(done) / secs : 0
        let eta = rate > 0 ? Double(total - done) / rate : .infinity
        let pct = total > 0 ? 100 * done / total : 100
        let etaText = eta.isFinite ? "ETA \(Self.duration(eta))" : "ETA -"
        let line = "\(label): \(done)/\(total) rows (\(pct)%), \(fmt(rate, 4)) rows/s, \(etaText)"
        Terminal.write("\r" + Terminal.cut(line, (Terminal.size(STDERR_FILENO)?.columns ?? 80) - 1) + "\u{1B}[K", to: STDERR_FILENO)
    }

    func finish() {
        guard enabled else { return }
        Terminal.write("\r\u{1B}[K", to: STDERR_FILENO)
    }

    static func duration(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? "\(t / 3600)h\(String(format: "%02d", t % 3600 / 60))m" : t >= 60 ? "\(t / 60)m\(String(format: "%02d", t % 60))s" : "\(t)s"
    }
}
