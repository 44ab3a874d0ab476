import CZeroMQ
import Foundation
import SaliencyCore
import Synchronization
import Testing

@testable import SaliencyStream

/// A unique directory under the temp dir for ipc:// endpoints.
func tempDir() -> String {
    let d = FileManager.default.temporaryDirectory.appendingPathComponent("saliency-\(UUID().uuidString.prefix(8))").path
    try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

func elapsed(since t: ContinuousClock.Instant) -> Duration { ContinuousClock.now - t }

/// Blocking socket tests run serialized and every wait is bounded (timeouts, retry deadlines).
@Suite("Sockets", .serialized)
struct SocketTests {
    @Test func pubSubMultipartWithTopicFiltering() throws {
        let ctx = try ZMQContext()
        let pub = try ctx.socket(.pub)
        try pub.bind("tcp://127.0.0.1:*")
        let endpoint = try pub.lastEndpoint
        #expect(endpoint.hasPrefix("tcp://127.0.0.1:") && !endpoint.hasSuffix(":*"))
        let sub = try ctx.socket(.sub)
        try sub.setReceiveTimeout(50)
        try sub.subscribe(Topic.prediction("m1"))
        try sub.connect(endpoint)

        let msg = ZMQMultipart()
        let header = PredictionHeader(fingerprint: 9, producerID: 1, sequence: 0, timestampNanos: 0)
        let payload: [Float] = [0.5, 1.5, 2.5]

        func publish(topic: [UInt8], sequence: UInt64) throws {
            var h = header
            h.sequence = sequence
            var hb = [UInt8](repeating: 0, count: PredictionHeader.size)
            hb.withUnsafeMutableBytes { h.encode(into: $0) }
            try pub.send(topic, more: true)
            try hb.withUnsafeBytes { _ = try pub.send($0, more: true) }
            try payload.withUnsafeBytes { _ = try pub.send($0) }
        }

        // Slow joiner: publish until the subscription is live (bounded at 5 s).
        let start = ContinuousClock.now
        var live = false
        while !live && elapsed(since: start) < .seconds(5) {
            try publish(topic: Topic.prediction("m1"), sequence: 0)
            live = try sub.receive(into: msg)
        }
        #expect(live, "subscription never became live")
        while try sub.receive(into: msg, dontWait: true) {}  // drain warm-up copies

        try publish(topic: Topic.prediction("other"), sequence: 1)
        try publish(topic: Topic.schema("m1"), sequence: 2)
        try publish(topic: Topic.prediction("m1"), sequence: 3)
        try sub.setReceiveTimeout(2000)
        #expect(try sub.receive(into: msg))
        #expect(msg.count == 3 && msg.totalCount == 3)
        #expect(Topic.parse(msg.frame(0)) == .prediction(model: "m1"))
        let got = try msg.withFrame(1) { (b) throws(SaliencyError) in try PredictionHeader.decode(b) }
        #expect(got.sequence == 3)
        #expect(PayloadCheck.validate(msg.frame(2), expectedCount: 3) == nil)
        #expect(Array(FloatPayload(msg.frame(2))) == payload)
        #expect(try sub.hasMore == false)
        try sub.setReceiveTimeout(100)
        #expect(try sub.receive(into: msg) == false)  // filtered topics never arrive
    }

    /// A frame moved into a FrameRing keeps its bytes, uncopied, while the multipart receives on;
    /// small (inline) and large frames alike; reusing or clearing a slot releases the old frame.
    @Test func movedFramesOutliveLaterReceives() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ctx = try ZMQContext()
        let push = try ctx.socket(.push)
        let pull = try ctx.socket(.pull)
        try pull.bind("ipc://\(dir)/frames")
        try push.connect("ipc://\(dir)/frames")
        try pull.setReceiveTimeout(2000)
        let msg = ZMQMultipart()
        let ring = FrameRing(count: 2)
        #expect(ring.frame(0).count == 0)
        let sizes = [16, 100_000, 24, 70_000]   // inline (< 34 B) and heap frames
        var sent: [[UInt8]] = []
        for (i, n) in sizes.enumerated() {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) }
            sent.append(bytes)
            try push.send([UInt8("h".utf8.first!)], more: true)
            try bytes.withUnsafeBytes { _ = try push.send($0) }
            #expect(try pull.receive(into: msg))
            #expect(msg.count == 2)
            msg.move(frame: 1, to: ring, slot: i % 2)
            #expect(msg.frame(1).count == 0)   // moved out: empty here
            // The slot not just written still holds the previous message's bytes.
            if i > 0 { #expect(Array(ring.frame((i - 1) % 2)) == sent[i - 1]) }
            #expect(Array(ring.frame(i % 2)) == bytes)
        }
        ring.clear(0)
        #expect(ring.frame(0).count == 0)
        #expect(Array(ring.frame(1)) == sent[3])
    }

    @Test func reqRepOverIPC() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ctx = try ZMQContext()
        let rep = try ctx.socket(.rep)
        try rep.bind("ipc://\(dir)/q.sock")
        try rep.setReceiveTimeout(2000)
        let req = try ctx.socket(.req)
        try req.connect("ipc://\(dir)/q.sock")
        try req.setReceiveTimeout(2000)

        #expect(try req.send(Array(#"{"op":"status"}"#.utf8)))
        let m = ZMQMultipart()
        #expect(try rep.receive(into: m))
        let parsed = try m.withFrame(0) { (b) throws(SaliencyError) in try QueryRequest.parse(b) }
        #expect(parsed == .status)
        #expect(try rep.send(QueryReply.error(code: .notReady, message: "calibrating")))
        #expect(try req.receive(into: m))
        #expect(m.string(0).contains("not_ready"))
    }

    @Test func receiveTimeout() throws {
        let ctx = try ZMQContext()
        let pull = try ctx.socket(.pull)
        try pull.bind("inproc://timeout")
        let m = ZMQMultipart()
        var t = ContinuousClock.now
        #expect(try pull.receive(into: m, dontWait: true) == false)
        #expect(elapsed(since: t) < .milliseconds(50))
        try pull.setReceiveTimeout(100)
        #expect(try pull.intOption(ZMQ_RCVTIMEO) == 100)
        t = ContinuousClock.now
        #expect(try pull.receive(into: m) == false)
        let e = elapsed(since: t)
        #expect(e >= .milliseconds(90) && e < .seconds(2))
        #expect(try pull.poll(timeout: 0) == [])
    }

    @Test func maxMessageSizeDropsOversizedFrameOnly() throws {
        let ctx = try ZMQContext()
        let pull = try ctx.socket(.pull)
        try pull.setMaxMessageSize(1000)
        try pull.bind("tcp://127.0.0.1:*")
        let ep = try pull.lastEndpoint
        let push = try ctx.socket(.push)
        try push.setSendTimeout(100)
        try push.connect(ep)

        #expect(try push.send([UInt8](repeating: 0xAB, count: 5000)))
        let m = ZMQMultipart()
        try pull.setReceiveTimeout(50)
        // libzmq drops the connection that carried the oversized frame; the pusher reconnects.
        let start = ContinuousClock.now
        var got: [UInt8]? = nil
        while got == nil && elapsed(since: start) < .seconds(5) {
            _ = try push.send([1, 2, 3], dontWait: true)
            if try pull.receive(into: m) { got = m.bytes(0) }
        }
        #expect(got == [1, 2, 3])
    }

    @Test func contextShutdownUnblocksPollerThread() throws {
        let ctx = try ZMQContext()
        let outcome = Mutex<String?>(nil)
        let ready = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        Thread { [ctx] in
            defer { done.signal() }
            do throws(ZMQError) {
                let pull = try ctx.socket(.pull)
                try pull.bind("inproc://shutdown-test")
                let set = ZMQPollSet()
                set.add(pull)
                let m = ZMQMultipart()
                ready.signal()
                while true {
                    if try set.poll(timeout: -1) > 0 { _ = try pull.receive(into: m, dontWait: true) }
                }
            } catch {
                outcome.withLock { $0 = error.isTerminated ? "ETERM" : "\(error)" }
            }
        }.start()
        #expect(ready.wait(timeout: .now() + 2) == .success)
        Thread.sleep(forTimeInterval: 0.05)
        let t = ContinuousClock.now
        ctx.shutdown()
        #expect(done.wait(timeout: .now() + 2) == .success)
        #expect(elapsed(since: t) < .milliseconds(500))
        #expect(outcome.withLock { $0 } == "ETERM")
    }

    @Test func multipartReuseAndFrameLimit() throws {
        let ctx = try ZMQContext()
        let pull = try ctx.socket(.pull)
        try pull.bind("inproc://frames")
        try pull.setReceiveTimeout(1000)
        let push = try ctx.socket(.push)
        try push.connect("inproc://frames")
        let m = ZMQMultipart(maxFrames: 2)

        #expect(try push.send(multipart: [[1], [], Array(repeating: 7, count: 100)]))
        #expect(try pull.receive(into: m))
        #expect(m.count == 2 && m.totalCount == 3)
        #expect(m.bytes(0) == [1] && m.frame(1).count == 0)

        #expect(try push.send(multipart: [[9, 9]]))
        #expect(try pull.receive(into: m))
        #expect(m.count == 1 && m.totalCount == 1 && m.bytes(0) == [9, 9])
    }

    @Test func pollSetOverTwoSockets() throws {
        let ctx = try ZMQContext()
        let a = try ctx.socket(.pull)
        try a.bind("inproc://a")
        let b = try ctx.socket(.pull)
        try b.bind("inproc://b")
        let pb = try ctx.socket(.push)
        try pb.connect("inproc://b")
        let set = ZMQPollSet()
        let ia = set.add(a)
        let ib = set.add(b)
        #expect(try set.poll(timeout: 0) == 0)
        try pb.send([42])
        #expect(try set.poll(timeout: 1000) == 1)
        #expect(set.ready(ia) == [] && set.ready(ib) == .pollIn)
        let m = ZMQMultipart()
        #expect(try b.receive(into: m, dontWait: true) && m.bytes(0) == [42])
    }

    @Test func errorsCarryErrnoAndText() throws {
        let ctx = try ZMQContext()
        let s = try ctx.socket(.pub)
        do {
            try s.bind("nonsense://x")
            Issue.record("bind should fail")
        } catch {
            #expect(error.errno == EPROTONOSUPPORT)
            #expect(error.description.contains("nonsense://x"))
            #expect(!error.isTerminated)
        }
        #expect(throws: ZMQError.self) { try s.setCurveSecretKey(z85: "short") }
        #expect(try s.intOption(ZMQ_LINGER) == 0)  // linger 0 by default
    }
}
