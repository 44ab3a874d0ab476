// SaliencyStream: ZeroMQ transport and wire codecs (docs/protocol.md). No statistics here.
import CZeroMQ
import SaliencyCore

public enum ZMQVersion {
    public static var string: String {
        var a: Int32 = 0, b: Int32 = 0, c: Int32 = 0
        zmq_version(&a, &b, &c)
        return "\(a).\(b).\(c)"
    }
}
