import CZeroMQ

/// A reusable receive buffer for multipart messages.
///
/// Owns heap-allocated `zmq_msg_t`s (never Swift values: libzmq keeps small frames *inside* the
/// struct and a copy would duplicate ownership). Each `receive` reuses them: `zmq_msg_recv`
/// releases the previous content, so steady-state receiving allocates nothing on the Swift side.
///
/// Frames are exposed as `UnsafeRawBufferPointer`s into libzmq's memory, **valid until the next
/// receive into this object or its deinit**. They may be misaligned (small frames live at odd
/// offsets; large ones may sit inside libzmq's receive buffer): read with `loadUnaligned`.
///
/// At most `maxFrames` frames are kept; extra frames of a message are received and discarded,
/// and `totalCount` reports the real frame count so callers can reject the message.
///
/// Not `Sendable`: it belongs with the socket's thread.
public final class ZMQMultipart {
    private var msgs: [UnsafeMutablePointer<zmq_msg_t>] = []
    private let scratch: UnsafeMutablePointer<zmq_msg_t>
    /// Frames kept by the last receive (≤ `maxFrames`).
    public private(set) var count = 0
    /// Frames the last message really had (> `count` when frames were discarded).
    public private(set) var totalCount = 0
    /// The most frames kept per message.
    public let maxFrames: Int

    /// - Parameter maxFrames: frames kept per message (defaults to 8; saliencyd messages have ≤ 3).
    public init(maxFrames: Int = 8) {
        precondition(maxFrames >= 1)
        self.maxFrames = maxFrames
        scratch = .allocate(capacity: 1)
        _ = ZMQ.msgInit(scratch)
    }

    deinit {
        for m in msgs {
            _ = ZMQ.msgClose(m)
            m.deallocate()
        }
        _ = ZMQ.msgClose(scratch)
        scratch.deallocate()
    }

    private func slot(_ i: Int) -> UnsafeMutablePointer<zmq_msg_t> {
        if i < msgs.count { return msgs[i] }
        let m = UnsafeMutablePointer<zmq_msg_t>.allocate(capacity: 1)
        _ = ZMQ.msgInit(m)
        msgs.append(m)
        return m
    }

    func receive(from socket: UnsafeMutableRawPointer, dontWait: Bool) throws(ZMQError) -> Bool {
        count = 0
        totalCount = 0
        var i = 0
        while true {
            let m = i < maxFrames ? slot(i) : scratch
            // Only the first frame may wait: the rest of a message arrives with it.
            let flags = i == 0 && dontWait ? ZMQ_DONTWAIT : 0
            switch try zmqCall("ZMQMultipart.receive", { ZMQ.msgRecv(m, socket, flags) }) {
            case .wouldBlock:
                if i == 0 { return false }
                // A timeout in the middle of a message cannot happen in libzmq (atomic delivery); be safe.
                throw ZMQError(errno: EAGAIN, function: "ZMQMultipart.receive", detail: "message ended after \(i) frames")
            case .processed:
                i += 1
                if i <= maxFrames { count = i }
                totalCount = i
                if !ZMQ.msgMore(m) { return true }
            }
        }
    }

    /// A metadata property of frame `i` (`zmq_msg_gets`), e.g. `"User-Id"` — the client's Z85 public
    /// key when a ZAP handler authenticated a CURVE connection — or nil if absent.
    public func property(_ name: String, frame i: Int = 0) -> String? {
        precondition(i >= 0 && i < count)
        guard let p = zmq_msg_gets(msgs[i], name) else { return nil }
        return String(cString: p)
    }

    /// Frame `i` (0 ≤ i < `count`) as bytes in libzmq's memory, without copying.
    /// Valid until the next receive into this object.
    public func frame(_ i: Int) -> UnsafeRawBufferPointer {
        precondition(i >= 0 && i < count, "frame \(i) out of range 0..<\(count)")
        let m = msgs[i]
        let n = ZMQ.msgSize(m)
        return UnsafeRawBufferPointer(start: n == 0 ? nil : ZMQ.msgData(m), count: n)
    }

    /// Frame `i`, scoped: the buffer must not escape `body`.
    public func withFrame<R, E: Error>(_ i: Int, _ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(frame(i))
    }

    /// Moves frame `i` into slot `slot` of `ring` without copying its bytes (`zmq_msg_move`; the
    /// slot's previous frame is released). Frame `i` here is empty afterwards: pointers obtained
    /// from `frame(i)` are invalid, read the bytes through `ring.frame(slot)` instead (a small
    /// frame stored inside the message structure moves with it).
    public func move(frame i: Int, to ring: FrameRing, slot: Int) {
        precondition(i >= 0 && i < count, "frame \(i) out of range 0..<\(count)")
        ring.take(msgs[i], slot: slot)
    }

    /// A copy of frame `i` (for tests and cold paths).
    public func bytes(_ i: Int) -> [UInt8] { Array(frame(i)) }

    /// Frame `i` decoded as UTF-8 (invalid sequences repaired), for topics and JSON in cold paths.
    public func string(_ i: Int) -> String { String(decoding: frame(i), as: UTF8.self) }
}

/// Readiness flags for `poll`.
public struct ZMQPollEvents: OptionSet, Sendable, Hashable {
    public let rawValue: Int16
    public init(rawValue: Int16) { self.rawValue = rawValue }
    /// A message can be received without blocking.
    public static let pollIn = ZMQPollEvents(rawValue: Int16(ZMQ_POLLIN))
    /// A message can be sent without blocking.
    public static let pollOut = ZMQPollEvents(rawValue: Int16(ZMQ_POLLOUT))
}

/// Polls several sockets at once (`zmq_poll`).
///
/// Add sockets with `add(_:events:)` (it returns the index to look up), then call `poll(timeout:)`
/// and `ready(_:)`. The set keeps raw socket handles: use it on the sockets' thread and only while
/// they are open (a closed socket makes `zmq_poll` fail with `ENOTSOCK`, which traps).
/// Not `Sendable`. Polling allocates nothing.
public final class ZMQPollSet {
    private var items: [zmq_pollitem_t] = []

    public init() {}

    /// Adds a socket; returns its index for `ready(_:)`.
    @discardableResult
    public func add(_ socket: borrowing ZMQSocket, events: ZMQPollEvents = .pollIn) -> Int {
        items.append(zmq_pollitem_t(socket: socket.handle, fd: 0, events: events.rawValue, revents: 0))
        return items.count - 1
    }

    /// Number of sockets in the set.
    public var count: Int { items.count }

    /// Waits up to `timeout` ms (−1 forever, 0 just look) for any socket to be ready.
    /// Returns how many are ready (0 on timeout). Throws `isTerminated` after context shutdown.
    /// An interrupted wait (`EINTR`) restarts with the full timeout.
    public func poll(timeout: Int) throws(ZMQError) -> Int {
        let n = Int32(items.count)
        let r = try items.withUnsafeMutableBufferPointer { (b) throws(ZMQError) -> ZMQIOResult<Int32> in
            try zmqCall("ZMQPollSet.poll") { ZMQ.poll(b.baseAddress!, n, timeout) }
        }
        switch r {
        case .processed(let k): return Int(k)
        case .wouldBlock: return 0
        }
    }

    /// The events that were ready for socket `index` at the last `poll`.
    public func ready(_ index: Int) -> ZMQPollEvents { ZMQPollEvents(rawValue: items[index].revents) }
}

/// A fixed set of retained frames: a frame moved in (`ZMQMultipart.move(frame:to:slot:)`) stays
/// alive, uncopied, until its slot is reused or the ring is deinitialized. The daemon keeps each
/// model's recent rows this way instead of copying 4·K bytes per prediction.
///
/// Owns heap-allocated `zmq_msg_t`s (never Swift values). Not `Sendable`: one owner thread.
public final class FrameRing {
    private let msgs: UnsafeMutablePointer<zmq_msg_t>
    /// Number of slots.
    public let count: Int

    public init(count: Int) {
        precondition(count >= 1)
        self.count = count
        msgs = .allocate(capacity: count)
        for i in 0..<count { _ = ZMQ.msgInit(msgs + i) }
    }

    deinit {
        for i in 0..<count { _ = ZMQ.msgClose(msgs + i) }
        msgs.deallocate()
    }

    func take(_ m: UnsafeMutablePointer<zmq_msg_t>, slot: Int) {
        precondition(slot >= 0 && slot < count, "slot \(slot) out of range 0..<\(count)")
        _ = ZMQ.msgMove(msgs + slot, m)   // releases the slot's previous content; cannot fail on valid messages
    }

    /// The bytes retained in `slot` (empty if nothing was moved in), valid until the slot is reused.
    public func frame(_ slot: Int) -> UnsafeRawBufferPointer {
        precondition(slot >= 0 && slot < count, "slot \(slot) out of range 0..<\(count)")
        let n = ZMQ.msgSize(msgs + slot)
        return UnsafeRawBufferPointer(start: n == 0 ? nil : ZMQ.msgData(msgs + slot), count: n)
    }

    /// Releases the frame in `slot` (the slot becomes empty).
    public func clear(_ slot: Int) {
        precondition(slot >= 0 && slot < count)
        _ = ZMQ.msgClose(msgs + slot)
        _ = ZMQ.msgInit(msgs + slot)
    }
}
