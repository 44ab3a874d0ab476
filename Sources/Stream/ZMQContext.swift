import CZeroMQ

/// A libzmq context: the I/O threads and the `inproc://` namespace that sockets share.
///
/// ## Why `@unchecked Sendable` is safe
/// 1. The only stored property is the immutable context pointer; Swift never mutates it.
/// 2. libzmq documents contexts as thread-safe: `zmq_socket`, `zmq_ctx_shutdown` and
///    `zmq_ctx_term` may be called from any thread, concurrently (zmq_ctx_new(3), "Thread safety").
/// 3. Sockets are *not* thread-safe; they are `ZMQSocket`, which is `~Copyable` and not `Sendable`,
///    so a socket stays with the thread that created it.
///
/// ## Lifetime
/// Every `ZMQSocket` holds its context strongly, so `deinit` (which calls `zmq_ctx_term`, and
/// that waits until every socket is closed) only runs after the last socket is gone. Sockets are
/// created with `ZMQ_LINGER` 0 by default, so the term never waits on unsent messages.
/// Call `shutdown()` from any thread to make every blocking call on every socket of this context
/// fail with `ETERM` (`ZMQError.isTerminated`), which is how poller threads are told to stop.
public final class ZMQContext: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer

    /// Creates a context. Throws if libzmq cannot (e.g. out of file descriptors).
    public init() throws(ZMQError) {
        guard let raw = zmq_ctx_new() else { throw ZMQError(errno: zmq_errno(), function: "ZMQContext.init") }
        self.raw = raw
    }

    /// Creates a context with `ioThreads` I/O threads (`ZMQ_IO_THREADS`, set before any socket).
    public convenience init(ioThreads: Int32) throws(ZMQError) {
        try self.init()
        guard zmq_ctx_set(raw, ZMQ_IO_THREADS, ioThreads) == 0 else { throw ZMQError(errno: zmq_errno(), function: "ZMQContext.init(ioThreads:)") }
    }

    /// Makes every blocking call of every socket in this context return `ETERM`, now and later.
    /// Non-blocking; idempotent; callable from any thread (e.g. a graceful-shutdown handler).
    public func shutdown() {
        _ = zmq_ctx_shutdown(raw)
    }

    /// Creates a socket of `type` with `ZMQ_LINGER` set to `linger` milliseconds (default 0).
    public func socket(_ type: ZMQSocketType, linger: Int32 = 0) throws(ZMQError) -> ZMQSocket {
        try ZMQSocket(self, type: type, linger: linger)
    }

    deinit {
        while zmq_ctx_term(raw) != 0 && zmq_errno() == EINTR {}
    }
}
