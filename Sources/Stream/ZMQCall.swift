// The one chokepoint for libzmq calls (style.md §1/§3, NIOPosix `syscall`).
import CZeroMQ
import SaliencyCore

/// An error reported by libzmq.
///
/// `errno` is libzmq's error number, `function` names the wrapper that made the call and
/// `message` is `zmq_strerror(errno)`. A context that was shut down (`ZMQContext.shutdown()`)
/// or terminated shows up as `isTerminated` (`ETERM`): the owner of the socket should close it
/// and leave its loop, it is not a fault.
public struct ZMQError: Error, Hashable, Sendable, CustomStringConvertible {
    /// libzmq's `errno` value (`zmq_errno()`).
    public let errno: Int32
    /// The Swift function that made the failing call.
    public let function: String
    /// `zmq_strerror(errno)`, plus context when the wrapper has some.
    public let message: String

    /// Builds the error for `errno`, reading libzmq's text for it.
    public init(errno: Int32, function: String, detail: String? = nil) {
        self.errno = errno
        self.function = function
        let text = String(cString: zmq_strerror(errno))
        self.message = detail.map { "\(text) (\($0))" } ?? text
    }

    /// True when the context was shut down or terminated (`ETERM`): time to close the socket.
    public var isTerminated: Bool { errno == ETERM }

    public var description: String { "\(function): \(message) [errno \(errno)]" }

    /// The same failure as a `SaliencyError` with code `.transport`.
    public var saliencyError: SaliencyError { SaliencyError(.transport, description) }
}

/// What a non-failing libzmq call did.
public enum ZMQIOResult<Value> {
    /// The call completed and returned `Value`.
    case processed(Value)
    /// `EAGAIN`: `ZMQ_DONTWAIT` was given and nothing could be done now, or a send/receive
    /// timeout (`ZMQ_SNDTIMEO` / `ZMQ_RCVTIMEO`) expired.
    case wouldBlock
}

/// Runs one raw libzmq call that returns `-1` on failure and interprets `errno`:
/// `EINTR` → retried; `EAGAIN` → `.wouldBlock`; `ETERM` → throws a `ZMQError` with
/// `isTerminated == true`; `ENOTSOCK` / `EFAULT` are programmer errors and trap;
/// anything else throws `ZMQError(errno:function:)`.
@inline(__always)
func zmqCall(_ function: String = #function, _ body: () -> Int32) throws(ZMQError) -> ZMQIOResult<Int32> {
    while true {
        let rc = body()
        if rc >= 0 { return .processed(rc) }
        let err = zmq_errno()
        switch err {
        case EINTR: continue
        case EAGAIN: return .wouldBlock
        case ENOTSOCK, EFAULT:
            preconditionFailure("\(function): \(String(cString: zmq_strerror(err))) — a closed or invalid socket/message was used")
        default: throw ZMQError(errno: err, function: function)
        }
    }
}

/// Like `zmqCall`, for calls whose `EAGAIN` cannot happen or is itself an error (options, bind).
@inline(__always)
func zmqCheck(_ function: String = #function, detail: @autoclosure () -> String? = nil, _ body: () -> Int32) throws(ZMQError) {
    while true {
        if body() >= 0 { return }
        let err = zmq_errno()
        if err == EINTR { continue }
        if err == ENOTSOCK || err == EFAULT {
            preconditionFailure("\(function): \(String(cString: zmq_strerror(err))) — a closed or invalid socket was used")
        }
        throw ZMQError(errno: err, function: function, detail: detail())
    }
}

/// Raw libzmq calls used by this module; everything above goes through `zmqCall`/`zmqCheck`.
enum ZMQ {
    static func socket(_ ctx: UnsafeMutableRawPointer, _ type: Int32) -> UnsafeMutableRawPointer? { zmq_socket(ctx, type) }
    static func close(_ s: UnsafeMutableRawPointer) -> Int32 { zmq_close(s) }
    static func bind(_ s: UnsafeMutableRawPointer, _ ep: String) -> Int32 { zmq_bind(s, ep) }
    static func unbind(_ s: UnsafeMutableRawPointer, _ ep: String) -> Int32 { zmq_unbind(s, ep) }
    static func connect(_ s: UnsafeMutableRawPointer, _ ep: String) -> Int32 { zmq_connect(s, ep) }
    static func disconnect(_ s: UnsafeMutableRawPointer, _ ep: String) -> Int32 { zmq_disconnect(s, ep) }
    static func setsockopt(_ s: UnsafeMutableRawPointer, _ o: Int32, _ v: UnsafeRawPointer?, _ n: Int) -> Int32 {
        zmq_setsockopt(s, o, v, n)
    }
    static func getsockopt(_ s: UnsafeMutableRawPointer, _ o: Int32, _ v: UnsafeMutableRawPointer, _ n: UnsafeMutablePointer<Int>) -> Int32 {
        zmq_getsockopt(s, o, v, n)
    }
    static func send(_ s: UnsafeMutableRawPointer, _ buf: UnsafeRawPointer?, _ n: Int, _ flags: Int32) -> Int32 {
        zmq_send(s, buf, n, flags)
    }
    static func msgInit(_ m: UnsafeMutablePointer<zmq_msg_t>) -> Int32 { zmq_msg_init(m) }
    static func msgClose(_ m: UnsafeMutablePointer<zmq_msg_t>) -> Int32 { zmq_msg_close(m) }
    static func msgMove(_ dst: UnsafeMutablePointer<zmq_msg_t>, _ src: UnsafeMutablePointer<zmq_msg_t>) -> Int32 { zmq_msg_move(dst, src) }
    static func msgRecv(_ m: UnsafeMutablePointer<zmq_msg_t>, _ s: UnsafeMutableRawPointer, _ flags: Int32) -> Int32 {
        zmq_msg_recv(m, s, flags)
    }
    static func msgMore(_ m: UnsafeMutablePointer<zmq_msg_t>) -> Bool { zmq_msg_more(m) != 0 }
    static func msgData(_ m: UnsafeMutablePointer<zmq_msg_t>) -> UnsafeMutableRawPointer? { zmq_msg_data(m) }
    static func msgSize(_ m: UnsafeMutablePointer<zmq_msg_t>) -> Int { zmq_msg_size(m) }
    static func poll(_ items: UnsafeMutablePointer<zmq_pollitem_t>, _ n: Int32, _ timeout: Int) -> Int32 {
        zmq_poll(items, n, timeout)
    }
}

/// The linked libzmq version.
public enum ZMQVersion {
    /// `"major.minor.patch"` of the libzmq this process runs against.
    public static var string: String {
        var a: Int32 = 0, b: Int32 = 0, c: Int32 = 0
        zmq_version(&a, &b, &c)
        return "\(a).\(b).\(c)"
    }

    /// Whether libzmq was built with a capability, e.g. `"curve"`, `"ipc"` (`zmq_has`).
    public static func has(_ capability: String) -> Bool { zmq_has(capability) != 0 }
}
