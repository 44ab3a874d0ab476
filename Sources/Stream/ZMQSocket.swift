import CZeroMQ

/// The socket patterns saliencyd and its clients use.
public enum ZMQSocketType: Sendable, Hashable, CaseIterable {
    case pub, sub, req, rep, push, pull, xpub, xsub, router, dealer

    var raw: Int32 {
        switch self {
        case .pub: ZMQ_PUB
        case .sub: ZMQ_SUB
        case .req: ZMQ_REQ
        case .rep: ZMQ_REP
        case .push: ZMQ_PUSH
        case .pull: ZMQ_PULL
        case .xpub: ZMQ_XPUB
        case .xsub: ZMQ_XSUB
        case .router: ZMQ_ROUTER
        case .dealer: ZMQ_DEALER
        }
    }
}

/// The one owner of a libzmq socket.
///
/// `~Copyable` so it can't be closed twice, and not `Sendable` because libzmq sockets are not
/// thread-safe: create it on the thread that will poll it and let it die there (`deinit` closes
/// it). The socket keeps its `ZMQContext` alive.
///
/// Blocking calls (`receive`, `send` without `dontWait`, `poll` with a timeout) must not run on
/// Swift's cooperative pool: run them on a dedicated `Thread` (docs/toolchain.md §5).
public struct ZMQSocket: ~Copyable {
    let handle: UnsafeMutableRawPointer
    /// The context this socket belongs to (kept alive by the socket).
    public let context: ZMQContext
    /// The socket's pattern.
    public let type: ZMQSocketType

    /// Creates a socket and sets `ZMQ_LINGER` (milliseconds; 0 = drop unsent messages on close).
    public init(_ context: ZMQContext, type: ZMQSocketType, linger: Int32 = 0) throws(ZMQError) {
        guard let h = ZMQ.socket(context.raw, type.raw) else {
            throw ZMQError(errno: zmq_errno(), function: "ZMQSocket.init", detail: "\(type)")
        }
        var v = linger
        do throws(ZMQError) {
            try zmqCheck("ZMQSocket.init") { ZMQ.setsockopt(h, ZMQ_LINGER, &v, MemoryLayout<Int32>.size) }
        } catch {
            _ = ZMQ.close(h)
            throw error
        }
        self.handle = h
        self.context = context
        self.type = type
    }

    deinit {
        _ = ZMQ.close(handle)
    }

    // MARK: - Endpoints

    /// Binds to an endpoint (`tcp://127.0.0.1:5560`, `tcp://127.0.0.1:*`, `ipc:///path`, `inproc://name`).
    public func bind(_ endpoint: String) throws(ZMQError) {
        try zmqCheck("ZMQSocket.bind", detail: endpoint) { ZMQ.bind(handle, endpoint) }
    }

    /// Connects to an endpoint; libzmq connects (and reconnects) in the background.
    public func connect(_ endpoint: String) throws(ZMQError) {
        try zmqCheck("ZMQSocket.connect", detail: endpoint) { ZMQ.connect(handle, endpoint) }
    }

    /// Stops listening on a bound endpoint (use the `lastEndpoint` form for wildcard binds).
    public func unbind(_ endpoint: String) throws(ZMQError) {
        try zmqCheck("ZMQSocket.unbind", detail: endpoint) { ZMQ.unbind(handle, endpoint) }
    }

    /// Disconnects from a connected endpoint.
    public func disconnect(_ endpoint: String) throws(ZMQError) {
        try zmqCheck("ZMQSocket.disconnect", detail: endpoint) { ZMQ.disconnect(handle, endpoint) }
    }

    /// The endpoint of the last `bind`/`connect` with wildcards resolved
    /// (`tcp://127.0.0.1:41235` after binding `tcp://127.0.0.1:*`).
    public var lastEndpoint: String {
        get throws(ZMQError) {
            var buf = [CChar](repeating: 0, count: 1024)
            var n = buf.count
            try zmqCheck("ZMQSocket.lastEndpoint") {
                buf.withUnsafeMutableBytes { ZMQ.getsockopt(handle, ZMQ_LAST_ENDPOINT, $0.baseAddress!, &n) }
            }
            return buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        }
    }

    // MARK: - Options

    func setInt(_ option: Int32, _ value: Int32, _ function: String = #function) throws(ZMQError) {
        var v = value
        try zmqCheck(function) { ZMQ.setsockopt(handle, option, &v, MemoryLayout<Int32>.size) }
    }

    func setBytes(_ option: Int32, _ bytes: some Collection<UInt8>, _ function: String = #function) throws(ZMQError) {
        let a = Array(bytes)
        try zmqCheck(function) { a.withUnsafeBytes { ZMQ.setsockopt(handle, option, $0.baseAddress, $0.count) } }
    }

    /// Reads an `int` option (e.g. `ZMQ_LINGER`, `ZMQ_RCVHWM`).
    public func intOption(_ option: Int32) throws(ZMQError) -> Int32 {
        var v: Int32 = 0
        var n = MemoryLayout<Int32>.size
        try zmqCheck("ZMQSocket.intOption") { ZMQ.getsockopt(handle, option, &v, &n) }
        return v
    }

    /// `ZMQ_LINGER`: how long `close` keeps unsent messages, in ms (−1 forever — never use it:
    /// the context's term would then hang; 0 drops them).
    public func setLinger(_ milliseconds: Int32) throws(ZMQError) { try setInt(ZMQ_LINGER, milliseconds) }

    /// `ZMQ_SNDHWM`: messages queued per peer before a PUB drops / a PUSH blocks (0 = unlimited).
    public func setSendHighWaterMark(_ messages: Int32) throws(ZMQError) { try setInt(ZMQ_SNDHWM, messages) }

    /// `ZMQ_RCVHWM`: messages queued per peer on the receiving side before the peer is pushed back / dropped.
    public func setReceiveHighWaterMark(_ messages: Int32) throws(ZMQError) { try setInt(ZMQ_RCVHWM, messages) }

    /// `ZMQ_RCVTIMEO`: a blocking receive returns `false` after this many ms (−1 = wait forever).
    public func setReceiveTimeout(_ milliseconds: Int32) throws(ZMQError) { try setInt(ZMQ_RCVTIMEO, milliseconds) }

    /// `ZMQ_SNDTIMEO`: a blocking send returns `false` after this many ms (−1 = wait forever).
    public func setSendTimeout(_ milliseconds: Int32) throws(ZMQError) { try setInt(ZMQ_SNDTIMEO, milliseconds) }

    /// `ZMQ_MAXMSGSIZE`: the largest inbound *frame* in bytes (−1 = no limit). A peer that sends a
    /// larger frame is disconnected by libzmq (it reconnects on its own); this socket keeps working
    /// and never sees the frame.
    public func setMaxMessageSize(_ bytes: Int64) throws(ZMQError) {
        var v = bytes
        try zmqCheck("ZMQSocket.setMaxMessageSize") { ZMQ.setsockopt(handle, ZMQ_MAXMSGSIZE, &v, MemoryLayout<Int64>.size) }
    }

    /// `ZMQ_AFFINITY`: which of the context's I/O threads (bit mask) serve this socket's
    /// connections (set before bind/connect). The daemon keeps the feed and the query socket on
    /// different I/O threads, so a flood of connections on one cannot stall the other.
    public func setAffinity(_ mask: UInt64) throws(ZMQError) {
        var v = mask
        try zmqCheck("ZMQSocket.setAffinity") { ZMQ.setsockopt(handle, ZMQ_AFFINITY, &v, MemoryLayout<UInt64>.size) }
    }

    /// `ZMQ_HANDSHAKE_IVL`: a peer that has not completed the ZMTP handshake within this many ms
    /// is disconnected (libzmq's default is 30 s; garbage-sending peers should not linger).
    public func setHandshakeInterval(_ milliseconds: Int32) throws(ZMQError) { try setInt(ZMQ_HANDSHAKE_IVL, milliseconds) }

    /// `ZMQ_BACKLOG`: the listen(2) backlog for bound TCP endpoints.
    public func setBacklog(_ connections: Int32) throws(ZMQError) { try setInt(ZMQ_BACKLOG, connections) }

    /// `ZMQ_SNDBUF` / `ZMQ_RCVBUF`: kernel socket buffer sizes in bytes (−1 = OS default).
    public func setKernelBuffers(send: Int32, receive: Int32) throws(ZMQError) {
        try setInt(ZMQ_SNDBUF, send)
        try setInt(ZMQ_RCVBUF, receive)
    }

    /// `ZMQ_SUBSCRIBE` (SUB): receive messages whose first frame starts with `prefix` (empty = all).
    public func subscribe(_ prefix: some Collection<UInt8>) throws(ZMQError) { try setBytes(ZMQ_SUBSCRIBE, prefix) }
    /// `ZMQ_SUBSCRIBE` with a UTF-8 string prefix.
    public func subscribe(_ prefix: String) throws(ZMQError) { try setBytes(ZMQ_SUBSCRIBE, Array(prefix.utf8)) }
    /// `ZMQ_UNSUBSCRIBE` (SUB): removes one earlier `subscribe` of the same prefix.
    public func unsubscribe(_ prefix: some Collection<UInt8>) throws(ZMQError) { try setBytes(ZMQ_UNSUBSCRIBE, prefix) }
    /// `ZMQ_UNSUBSCRIBE` with a UTF-8 string prefix.
    public func unsubscribe(_ prefix: String) throws(ZMQError) { try setBytes(ZMQ_UNSUBSCRIBE, Array(prefix.utf8)) }

    /// `ZMQ_IMMEDIATE`: queue messages only to completed connections (no queuing for peers that
    /// are still connecting).
    public func setImmediate(_ on: Bool) throws(ZMQError) { try setInt(ZMQ_IMMEDIATE, on ? 1 : 0) }

    /// `ZMQ_CURVE_SERVER`: this socket is the CURVE server (it needs `setCurveSecretKey`).
    public func setCurveServer(_ on: Bool) throws(ZMQError) { try setInt(ZMQ_CURVE_SERVER, on ? 1 : 0) }

    /// `ZMQ_CURVE_PUBLICKEY`, as 40 Z85 characters (set on clients; servers derive it).
    public func setCurvePublicKey(z85: String) throws(ZMQError) { try setZ85(ZMQ_CURVE_PUBLICKEY, z85) }
    /// `ZMQ_CURVE_SECRETKEY`, as 40 Z85 characters (clients and servers).
    public func setCurveSecretKey(z85: String) throws(ZMQError) { try setZ85(ZMQ_CURVE_SECRETKEY, z85) }
    /// `ZMQ_CURVE_SERVERKEY` (clients): the server's public key as 40 Z85 characters.
    public func setCurveServerKey(z85: String) throws(ZMQError) { try setZ85(ZMQ_CURVE_SERVERKEY, z85) }

    private func setZ85(_ option: Int32, _ z85: String, _ function: String = #function) throws(ZMQError) {
        let bytes = Array(z85.utf8)
        guard bytes.count == 40 else { throw ZMQError(errno: EINVAL, function: function, detail: "a Z85 key is 40 characters, got \(bytes.count)") }
        try setBytes(option, bytes, function)
    }

    /// `ZMQ_ZAP_DOMAIN`: the domain passed to the ZAP handler (RFC 27) for this socket.
    public func setZAPDomain(_ domain: String) throws(ZMQError) { try setBytes(ZMQ_ZAP_DOMAIN, Array(domain.utf8)) }

    /// `ZMQ_RCVMORE`: whether the last received frame (via the raw API) has more frames after it.
    public var hasMore: Bool {
        get throws(ZMQError) { try intOption(ZMQ_RCVMORE) != 0 }
    }

    // MARK: - Send

    /// Sends one frame from caller-owned memory (libzmq copies it; no Swift allocation).
    /// `more: true` sets `ZMQ_SNDMORE`: further frames of the same message follow.
    /// Returns `false` if the send would block (`dontWait`, or `ZMQ_SNDTIMEO` expired).
    /// Once the first frame of a message was accepted, send the rest without `dontWait`:
    /// libzmq then accepts them (messages are atomic).
    @discardableResult
    public func send(_ frame: UnsafeRawBufferPointer, more: Bool = false, dontWait: Bool = false) throws(ZMQError) -> Bool {
        let flags = (more ? ZMQ_SNDMORE : 0) | (dontWait ? ZMQ_DONTWAIT : 0)
        switch try zmqCall("ZMQSocket.send", { ZMQ.send(handle, frame.baseAddress, frame.count, flags) }) {
        case .processed: return true
        case .wouldBlock: return false
        }
    }

    /// Sends one frame from a byte array (see `send(_:more:dontWait:)`).
    @discardableResult
    public func send(_ frame: [UInt8], more: Bool = false, dontWait: Bool = false) throws(ZMQError) -> Bool {
        try frame.withUnsafeBytes { b in Result { () throws(ZMQError) in try send(b, more: more, dontWait: dontWait) } }.get()
    }

    /// Sends a multipart message. Returns `false` if the first frame would block (nothing was
    /// sent); after the first frame the rest are sent blocking so the message stays whole.
    @discardableResult
    public func send(multipart frames: [[UInt8]], dontWait: Bool = false) throws(ZMQError) -> Bool {
        precondition(!frames.isEmpty, "a message has at least one frame")
        for (i, f) in frames.enumerated() {
            let ok = try send(f, more: i < frames.count - 1, dontWait: dontWait && i == 0)
            if !ok { return false }
        }
        return true
    }

    // MARK: - Receive

    /// Receives one whole multipart message into `message`, reusing its frames.
    /// Returns `false` if nothing arrived (`dontWait`, or `ZMQ_RCVTIMEO` expired).
    /// Throws `ZMQError` with `isTerminated` once the context is shut down.
    public func receive(into message: ZMQMultipart, dontWait: Bool = false) throws(ZMQError) -> Bool {
        try message.receive(from: handle, dontWait: dontWait)
    }

    // MARK: - Poll

    /// Waits until this socket is readable (or writable with `.pollOut`) or `timeout` ms pass
    /// (−1 = forever, 0 = just look). Returns the events that are ready.
    public func poll(_ events: ZMQPollEvents = .pollIn, timeout: Int) throws(ZMQError) -> ZMQPollEvents {
        var item = zmq_pollitem_t(socket: handle, fd: 0, events: events.rawValue, revents: 0)
        switch try zmqCall("ZMQSocket.poll", { ZMQ.poll(&item, 1, timeout) }) {
        case .processed: return ZMQPollEvents(rawValue: item.revents)
        case .wouldBlock: return []
        }
    }
}

@available(*, unavailable, message: "a libzmq socket belongs to one thread; create it on the thread that uses it")
extension ZMQSocket: Sendable {}
