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

    /// `schema_keys_file`: a producer key may announce only the models its line names; another
    /// key's schema for that model is refused (`forbidden_schema`) and never registers.
    @Test func schemaKeysSayWhoMayAnnounceWhichModel() throws {
        let dir = E2E.tempDir()
        let server = try CurveKeyPair.generate(), teamA = try CurveKeyPair.generate(), teamB = try CurveKeyPair.generate(), admin = try CurveKeyPair.generate()
        try server.save(to: dir + "/server.key")
        try "\(teamA.publicKey)\n\(teamB.publicKey)\n".write(toFile: dir + "/clients.pub", atomically: true, encoding: .utf8)
        try admin.savePublic(to: dir + "/admin.pub")
        try "# team A owns model-a\n\(teamA.publicKey) model-a\n\(teamB.publicKey) model-b  # and B owns model-b\n".write(toFile: dir + "/schema.keys", atomically: true, encoding: .utf8)
        let toml = """
        [security]
        curve = true
        server_secret_key_file = "\(dir)/server.key"
        allowed_clients_file = "\(dir)/clients.pub"
        admin_clients_file = "\(dir)/admin.pub"
        schema_keys_file = "\(dir)/schema.keys"
        """
        try toml.write(toFile: dir + "/saliencyd.toml", atomically: true, encoding: .utf8)
        let daemon = try DaemonProcess(dir: dir, extra: ["--config", dir + "/saliencyd.toml"])
        var ok = false
        defer { if !ok { print("daemon log:\n" + daemon.log) } }
        func publisher(_ me: CurveKeyPair) throws -> ZMQSocket {
            let ctx = try ZMQContext()
            let s = try ctx.socket(.pub)
            try s.setCurveServerKey(z85: server.publicKey)
            try s.setCurvePublicKey(z85: me.publicKey)
            try s.setCurveSecretKey(z85: me.secretKey)
            try s.connect(daemon.feed)
            return s
        }
        func schema(_ model: String) throws -> [[UInt8]] {
            let sc = try ModelSchema(model: model, layers: [.init(name: "conv", filters: 4)])
            return [Topic.schema(model), SchemaMessage.encode(sc)]
        }
        let a = try publisher(teamA), b = try publisher(teamB)
        func status() throws -> [String: Any] {
            for _ in 0..<40 {
                let s = try client(daemon.query, server: server.publicKey, me: admin)
                if let text = try ask(s, "{\"op\":\"status\"}") { return try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any] }
            }
            throw SaliencyError(.transport, "no status")
        }
        _ = try status()
        // Each team announces its own model and squats the other's, repeatedly (PUB joins late).
        var models: Set<String> = []
        var forbidden = 0
        for _ in 0..<50 {
            _ = try a.send(multipart: try schema("model-a")); _ = try a.send(multipart: try schema("model-b"))
            _ = try b.send(multipart: try schema("model-b")); _ = try b.send(multipart: try schema("model-a"))
            Thread.sleep(forTimeInterval: 0.05)
            let s = try status()
            models = Set((s["models"] as! [[String: Any]]).map { $0["model"] as! String })
            forbidden = ((s["rejected"] as! [String: Any])["forbidden_schema"] as? NSNumber)?.intValue ?? 0
            if models.count == 2 && forbidden >= 2 { break }
        }
        #expect(models == ["model-a", "model-b"])
        #expect(forbidden >= 2)
        #expect(daemon.stop() == 0)
        ok = true
    }
}
