import Dispatch
import Foundation
import SaliencyCore
import Synchronization

/// A ZAP handler (ZeroMQ RFC 27) that admits CURVE clients whose public key is on an allow-list.
///
/// `start()` spawns one `Thread` that owns a REP socket bound to `inproc://zeromq.zap.01` in the
/// given context (libzmq asks it about every CURVE handshake on that context's sockets with a
/// ZAP domain or `ZMQ_CURVE_SERVER`). Replies are `200` with the client's Z85 key as user id, or
/// `400` (unknown key, non-CURVE mechanism, wrong domain, malformed request).
///
/// The thread leaves within ~100 ms of `stop()`, or at once when the context is shut down.
/// `Sendable` without `@unchecked`: all mutable state is in `Mutex`/`Atomic`.
public final class ZAPHandler: Sendable {
    /// The endpoint libzmq sends ZAP requests to.
    public static let endpoint = "inproc://zeromq.zap.01"

    private let context: ZMQContext
    private let domain: String?
    private let allowed: Mutex<Set<[UInt8]>>
    private let stopFlag = Atomic<Bool>(false)
    private let exited = DispatchSemaphore(value: 0)
    private let started = Atomic<Bool>(false)
    private let acceptedCount = Atomic<Int>(0)
    private let deniedCount = Atomic<Int>(0)

    /// - Parameters:
    ///   - allowedClientKeys: client public keys, Z85 (40 characters each).
    ///   - domain: if set, only requests for this ZAP domain are admitted.
    public init(context: ZMQContext, allowedClientKeys: [String], domain: String? = nil) throws(SaliencyError) {
        var keys = Set<[UInt8]>()
        for k in allowedClientKeys {
            guard Z85.isKey(k), let raw = Z85.decode(k) else {
                throw SaliencyError(.invalidConfiguration, "allowed client key '\(k.prefix(40))' is not 40 Z85 characters")
            }
            keys.insert(raw)
        }
        self.context = context
        self.domain = domain
        self.allowed = Mutex(keys)
    }

    /// Handshakes admitted so far.
    public var accepted: Int { acceptedCount.load(ordering: .relaxed) }
    /// Handshakes refused so far.
    public var denied: Int { deniedCount.load(ordering: .relaxed) }

    /// Adds a client key (Z85) to the allow-list; takes effect for the next handshake.
    public func allow(_ z85: String) throws(SaliencyError) {
        guard Z85.isKey(z85), let raw = Z85.decode(z85) else { throw SaliencyError(.invalidConfiguration, "client key must be 40 Z85 characters") }
        _ = allowed.withLock { $0.insert(raw) }
    }

    /// Removes a client key (Z85); established connections stay up.
    public func revoke(_ z85: String) {
        guard let raw = Z85.decode(z85) else { return }
        _ = allowed.withLock { $0.remove(raw) }
    }

    /// Binds the handler socket on its own thread and returns once it is bound (so CURVE sockets
    /// created afterwards are always checked). Throws the bind error (e.g. `EADDRINUSE` if this
    /// context already has a ZAP handler). Call once.
    public func start() throws(ZMQError) {
        precondition(!started.exchange(true, ordering: .relaxed), "ZAPHandler.start() called twice")
        let bound = DispatchSemaphore(value: 0)
        let bindError = Mutex<ZMQError?>(nil)
        Thread { [self] in
            defer { exited.signal() }
            do throws(ZMQError) {
                let rep = try context.socket(.rep)
                try rep.bind(Self.endpoint)
                bound.signal()
                try serve(rep)
            } catch {
                if !error.isTerminated { bindError.withLock { $0 = $0 ?? error } }
                bound.signal()
            }
        }.start()
        bound.wait()
        if let e = bindError.withLock({ $0 }) { throw e }
    }

    /// Asks the thread to leave and waits for it (≤ ~100 ms). Idempotent.
    public func stop() {
        guard started.load(ordering: .relaxed), !stopFlag.exchange(true, ordering: .relaxed) else { return }
        exited.wait()
    }

    private func serve(_ rep: borrowing ZMQSocket) throws(ZMQError) {
        let set = ZMQPollSet()
        set.add(rep)
        let m = ZMQMultipart(maxFrames: 8)
        while !stopFlag.load(ordering: .relaxed) {
            guard try set.poll(timeout: 100) > 0, try rep.receive(into: m, dontWait: true) else { continue }
            let (reply, ok) = answer(m)
            if ok { acceptedCount.add(1, ordering: .relaxed) } else { deniedCount.add(1, ordering: .relaxed) }
            try rep.send(multipart: reply)
        }
    }

    /// Request: version, request id, domain, address, identity, mechanism, credentials…
    /// Reply: version, request id, status code, status text, user id, metadata.
    private func answer(_ m: ZMQMultipart) -> ([[UInt8]], Bool) {
        let requestID = m.count > 1 ? m.bytes(1) : []
        func reply(_ code: String, _ text: String, user: String = "") -> [[UInt8]] {
            [Array("1.0".utf8), requestID, Array(code.utf8), Array(text.utf8), Array(user.utf8), []]
        }
        guard m.count >= 6, m.totalCount == m.count, m.bytes(0) == Array("1.0".utf8) else {
            return (reply("400", "malformed ZAP request"), false)
        }
        if let d = domain, m.string(2) != d { return (reply("400", "domain not served"), false) }
        guard m.string(5) == "CURVE", m.count == 7, m.frame(6).count == 32 else {
            return (reply("400", "only CURVE clients are admitted"), false)
        }
        let key = m.bytes(6)
        guard allowed.withLock({ $0.contains(key) }) else { return (reply("400", "client key not allowed"), false) }
        return (reply("200", "OK", user: Z85.encode(key) ?? ""), true)
    }
}
