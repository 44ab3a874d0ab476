import Foundation
import SaliencyCore
import Testing

@testable import SaliencyStream

/// Smoke test of the benchmark path (BENCHMARKS.md: "raw ZeroMQ transport rate for a
/// 64+4·26560-byte message"): prebuilt frames sent with `send(_:more:)` from raw buffers and
/// received into one reused `ZMQMultipart`, so the loop allocates nothing on the Swift side.
/// Debug build numbers are indicative only; the benchmark proper runs in release.
@Suite("Transport rate", .serialized)
struct TransportRateTests {
    @Test func prebuiltFramesOverTCP() throws {
        let k = 26_560, n = 2_000
        let ctx = try ZMQContext()
        let pull = try ctx.socket(.pull)
        try pull.setReceiveTimeout(2000)
        try pull.bind("tcp://127.0.0.1:*")
        let push = try ctx.socket(.push)
        try push.setSendTimeout(2000)
        try push.connect(try pull.lastEndpoint)

        let topic = Topic.prediction("bench")
        let header = PredictionHeader(fingerprint: 1, producerID: 2, sequence: 0, timestampNanos: 0).encoded()
        let payload = [Float](repeating: 0.01, count: k)
        let m = ZMQMultipart()

        let t0 = ContinuousClock.now
        var received = 0, bad = 0
        try topic.withUnsafeBytes { t in
            try header.withUnsafeBytes { h in
                try payload.withUnsafeBytes { p in
                    for _ in 0..<n {
                        try push.send(t, more: true)
                        try push.send(h, more: true)
                        try push.send(p)
                        // Keep the pipe short: receive as we go (one thread owns both sockets).
                        while try pull.receive(into: m, dontWait: true) {
                            received += 1
                            if m.count != 3 || PayloadCheck.validate(m.frame(2), expectedCount: k) != nil { bad += 1 }
                        }
                    }
                }
            }
        }
        while received < n, try pull.receive(into: m) {
            received += 1
            if m.count != 3 || PayloadCheck.validate(m.frame(2), expectedCount: k) != nil { bad += 1 }
        }
        let d = ContinuousClock.now - t0
        let secs = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        #expect(received == n && bad == 0)
        print("transport (debug build, tcp loopback, one thread): \(Int(Double(n) / secs)) msg/s of \(64 + 4 * k) bytes, validated")
    }
}
