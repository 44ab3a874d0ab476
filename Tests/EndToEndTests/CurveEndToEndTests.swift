import Foundation
import SaliencyCore
import SaliencyStream
import Testing

/// CURVE on a real daemon: an allowed client is served, a stranger gets nothing, a client with the
/// wrong server key gets nothing, and state-changing queries need an admin key.
@Suite(.serialized) struct CurveEndToEndTests {
    /// The socket keeps its context alive.
    func client(_ endpoint: String, server: String, me: CurveKeyPair) throws -> ZMQSocket {
        let ctx = try ZMQContext()
        let s = try ctx.socket(.req)
        try s.setCurveServerKey(z85: server)
        try s.setCurvePublicKey(z85: me.publicKey)
        try s.setCurveSecretKey(z85: me.secretKey)
        try s.setReceiveTimeout(1500)
        try s.connect(endpoint)
        return s
    }

    func ask(_ s: borrowing ZMQSocket, _ json: String) throws -> String? {
        _ = try s.send(Array(json.utf8))
        let m = ZMQMultipart(maxFrames: 1)
        return try s.receive(into: m) ? m.string(0) : nil
    }

    @Test func strangersAreRefused() throws {
        let dir = E2E.tempDir()
        let server = try CurveKeyPair.generate(), friend = try CurveKeyPair.generate(), admin = try CurveKeyPair.generate()
        let stranger = try CurveKeyPair.generate()
        try server.save(to: dir + "/server.key")
        try friend.savePublic(to: dir + "/friend.pub")
        try admin.savePublic(to: dir + "/admin.pub")
        let toml = """
        [security]
        curve = true
        server_secret_key_file = "\(dir)/server.key"
        allowed_clients_file = "\(dir)/friend.pub"
        admin_clients_file = "\(dir)/admin.pub"
        """
        try toml.write(toFile: dir + "/saliencyd.toml", atomically: true, encoding: .utf8)
        let daemon = try DaemonProcess(dir: dir, extra: ["--config", dir + "/saliencyd.toml"])
        var ok = false
        defer { if !ok { print("daemon log:\n" + daemon.log) } }
        // The friend is served (retry while the daemon starts).
        var answer: String?
        for _ in 0..<40 where answer == nil {
            let s = try client(daemon.query, server: server.publicKey, me: friend)
            answer = try ask(s, "{\"op\":\"status\"}")
        }
        #expect(answer?.contains("\"ok\":true") == true)
        // A stranger's key: the ZAP handler refuses the handshake, no reply ever comes.
        do {
            let s = try client(daemon.query, server: server.publicKey, me: stranger)
            #expect(try ask(s, "{\"op\":\"status\"}") == nil)
        }
        // The wrong server key: the handshake fails.
        do {
            let s = try client(daemon.query, server: stranger.publicKey, me: friend)
            #expect(try ask(s, "{\"op\":\"status\"}") == nil)
        }
        // State-changing queries: refused for the friend, allowed for the admin.
        do {
            let s = try client(daemon.query, server: server.publicKey, me: friend)
            #expect(try ask(s, "{\"op\":\"snapshot\"}")?.contains("forbidden") == true)
        }
        do {
            let s = try client(daemon.query, server: server.publicKey, me: admin)
            #expect(try ask(s, "{\"op\":\"snapshot\"}")?.contains("\"ok\":true") == true)
        }
        // A plain (non-CURVE) client gets nothing either.
        do {
            let ctx = try ZMQContext()
            let s = try ctx.socket(.req)
            try s.setReceiveTimeout(1000)
            try s.connect(daemon.query)
            #expect(try ask(s, "{\"op\":\"status\"}") == nil)
        }
        #expect(daemon.stop() == 0)
        ok = true
    }
}
