import CZeroMQ
import Foundation
import SaliencyCore
import Testing

@testable import SaliencyStream

@Suite("Z85 and key files")
struct Z85Tests {
    @Test func rfc32TestVector() {
        let bytes: [UInt8] = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B]
        #expect(Z85.encode(bytes) == "HelloWorld")
        #expect(Z85.decode("HelloWorld") == bytes)
        #expect(Z85.encode([1, 2, 3]) == nil)
        #expect(Z85.decode("Hell") == nil)
        #expect(Z85.decode("Hell\"") == nil)  // '"' is not in the alphabet
        #expect(Z85.decode("#####") == nil)  // > 2^32 − 1
        #expect(Z85.decode("") == [])
    }

    @Test func matchesLibzmq() {
        var rng = SplitMix64(seed: 85)
        for _ in 0..<50 {
            let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
            var out = [CChar](repeating: 0, count: 41)
            _ = zmq_z85_encode(&out, bytes, 32)
            let theirs = out.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            #expect(Z85.encode(bytes) == theirs)
            #expect(Z85.decode(theirs) == bytes)
        }
    }

    @Test func keyPairsAndFiles() throws {
        let pair = try CurveKeyPair.generate()
        #expect(Z85.isKey(pair.publicKey) && Z85.isKey(pair.secretKey))
        #expect(try CurveKeyPair(secretKey: pair.secretKey) == pair)
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try pair.save(to: "\(dir)/server.key")
        try pair.savePublic(to: "\(dir)/server.pub")
        #expect(try CurveKeyPair.load(from: "\(dir)/server.key") == pair)
        #expect(try CurveKeyPair.loadPublicKey(from: "\(dir)/server.pub") == pair.publicKey)
        let mode = try FileManager.default.attributesOfItem(atPath: "\(dir)/server.key")[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(throws: SaliencyError.self) { try CurveKeyPair.load(from: "\(dir)/server.pub") }  // no secret
        #expect(throws: SaliencyError.self) { try CurveKeyPair.load(from: "\(dir)/missing") }
        try "public = short\n".write(toFile: "\(dir)/bad", atomically: true, encoding: .utf8)
        #expect(throws: SaliencyError.self) { try CurveKeyPair.loadPublicKey(from: "\(dir)/bad") }
        let other = try CurveKeyPair.generate()
        try "public = \(other.publicKey)\nsecret = \(pair.secretKey)\n".write(toFile: "\(dir)/mixed", atomically: true, encoding: .utf8)
        #expect(throws: SaliencyError.self) { try CurveKeyPair.load(from: "\(dir)/mixed") }
    }
}

@Suite("CURVE + ZAP", .serialized, .enabled(if: ZMQVersion.has("curve")))
struct CurveSocketTests {
    /// Publishes on a CURVE server PUB until `allowed` receives (bounded), then keeps publishing
    /// for a while and reports what each subscriber got.
    @Test func allowListAndWrongServerKey() throws {
        let ctx = try ZMQContext()
        let server = try CurveKeyPair.generate()
        let good = try CurveKeyPair.generate()
        let stranger = try CurveKeyPair.generate()
        let impostor = try CurveKeyPair.generate()  // a server key the client wrongly trusts

        let zap = try ZAPHandler(context: ctx, allowedClientKeys: [good.publicKey], domain: "saliencyd")
        try zap.start()
        defer { zap.stop() }

        let pub = try ctx.socket(.pub)
        try pub.setCurveServer(true)
        try pub.setCurveSecretKey(z85: server.secretKey)
        try pub.setZAPDomain("saliencyd")
        try pub.bind("tcp://127.0.0.1:*")
        let ep = try pub.lastEndpoint

        func client(_ keys: CurveKeyPair, serverKey: String) throws -> ZMQSocket {
            let s = try ctx.socket(.sub)
            try s.setCurveServerKey(z85: serverKey)
            try s.setCurvePublicKey(z85: keys.publicKey)
            try s.setCurveSecretKey(z85: keys.secretKey)
            try s.subscribe("alert.")
            try s.connect(ep)
            return s
        }
        let allowed = try client(good, serverKey: server.publicKey)
        let unknown = try client(stranger, serverKey: server.publicKey)
        let wrongServer = try client(good, serverKey: impostor.publicKey)

        let m = ZMQMultipart()
        var got = (allowed: 0, unknown: 0, wrongServer: 0)
        let start = ContinuousClock.now
        var sinceFirst: ContinuousClock.Instant? = nil
        while ContinuousClock.now - start < .seconds(5) {
            if let t = sinceFirst, ContinuousClock.now - t > .milliseconds(400) { break }
            try pub.send(multipart: [Topic.alert(status: .firing, model: "m", layer: "conv1"), Array("{}".utf8)])
            Thread.sleep(forTimeInterval: 0.02)
            while try allowed.receive(into: m, dontWait: true) {
                got.allowed += 1
                if sinceFirst == nil { sinceFirst = .now }
            }
            while try unknown.receive(into: m, dontWait: true) { got.unknown += 1 }
            while try wrongServer.receive(into: m, dontWait: true) { got.wrongServer += 1 }
        }
        #expect(got.allowed > 0, "the allowed client got nothing")
        #expect(got.unknown == 0)
        #expect(got.wrongServer == 0)
        #expect(zap.accepted >= 1)
        #expect(zap.denied >= 1)
    }

    @Test func secondHandlerOnSameContextFails() throws {
        let ctx = try ZMQContext()
        let a = try ZAPHandler(context: ctx, allowedClientKeys: [])
        try a.start()
        defer { a.stop() }
        let b = try ZAPHandler(context: ctx, allowedClientKeys: [])
        #expect(throws: ZMQError.self) { try b.start() }
        #expect(throws: SaliencyError.self) { try ZAPHandler(context: ctx, allowedClientKeys: ["nope"]) }
    }
}
