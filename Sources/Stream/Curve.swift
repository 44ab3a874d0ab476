import CZeroMQ
import Foundation
import SaliencyCore

/// Z85 (ZeroMQ RFC 32): 4 bytes ↔ 5 printable characters. Pure Swift, no allocation beyond the result.
public enum Z85 {
    static let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#".utf8)
    static let decoder: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 128)
        for (i, c) in alphabet.enumerated() { t[Int(c)] = UInt8(i) }
        return t
    }()

    /// Encodes `bytes`; `nil` unless `bytes.count` is a multiple of 4.
    public static func encode(_ bytes: some Collection<UInt8>) -> String? {
        let b = Array(bytes)
        guard b.count % 4 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(b.count / 4 * 5)
        for i in stride(from: 0, to: b.count, by: 4) {
            var v = UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
            var chunk = [UInt8](repeating: 0, count: 5)
            for j in (0..<5).reversed() {
                chunk[j] = alphabet[Int(v % 85)]
                v /= 85
            }
            out += chunk
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes Z85 text; `nil` if the length is not a multiple of 5, a character is outside the
    /// alphabet, or a group exceeds 2^32 − 1.
    public static func decode(_ text: String) -> [UInt8]? {
        let c = Array(text.utf8)
        guard c.count % 5 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(c.count / 5 * 4)
        for i in stride(from: 0, to: c.count, by: 5) {
            var v: UInt64 = 0
            for j in 0..<5 {
                let ch = c[i + j]
                guard ch < 128, decoder[Int(ch)] != 0xFF else { return nil }
                v = v * 85 + UInt64(decoder[Int(ch)])
            }
            guard v <= UInt64(UInt32.max) else { return nil }
            out += [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)]
        }
        return out
    }

    /// Whether `text` is a CURVE key: 40 Z85 characters (32 bytes).
    public static func isKey(_ text: String) -> Bool { text.utf8.count == 40 && decode(text) != nil }
}

/// A CURVE key pair as Z85 text (40 characters each).
///
/// Key files are text, one `name = value` per line, `#` comments allowed:
/// ```
/// # saliencyd CURVE key pair (Z85). Keep the secret key private.
/// public = rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7
/// secret = JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6
/// ```
/// A public-only file (what you hand to peers) has just the `public` line.
public struct CurveKeyPair: Sendable, Hashable {
    /// Z85 public key (40 characters).
    public let publicKey: String
    /// Z85 secret key (40 characters).
    public let secretKey: String

    /// A fresh key pair from libzmq (`zmq_curve_keypair`). Throws if libzmq lacks CURVE.
    public static func generate() throws(ZMQError) -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        try zmqCheck("CurveKeyPair.generate") { zmq_curve_keypair(&pub, &sec) }
        return CurveKeyPair(uncheckedPublic: string(pub), secret: string(sec))
    }

    /// The pair for an existing secret key (public key derived with `zmq_curve_public`).
    public init(secretKey: String) throws(SaliencyError) {
        guard Z85.isKey(secretKey) else { throw SaliencyError(.invalidConfiguration, "secret key must be 40 Z85 characters") }
        var pub = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&pub, secretKey) == 0 else {
            throw SaliencyError(.invalidConfiguration, "cannot derive the public key: \(String(cString: zmq_strerror(zmq_errno())))")
        }
        self.init(uncheckedPublic: Self.string(pub), secret: secretKey)
    }

    private init(uncheckedPublic: String, secret: String) {
        publicKey = uncheckedPublic
        secretKey = secret
    }

    private static func string(_ c: [CChar]) -> String { c.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } }

    /// Writes `public` and `secret` lines to `path`, readable by the owner only (0600).
    public func save(to path: String) throws(SaliencyError) {
        let text = "# saliencyd CURVE key pair (Z85). Keep the secret key private.\npublic = \(publicKey)\nsecret = \(secretKey)\n"
        try Self.write(text, to: path, permissions: 0o600)
    }

    /// Writes only the `public` line to `path` (0644), for handing to peers.
    public func savePublic(to path: String) throws(SaliencyError) {
        try Self.write("# saliencyd CURVE public key (Z85)\npublic = \(publicKey)\n", to: path, permissions: 0o644)
    }

    /// Reads a key pair file written by `save(to:)` (the public key must match the secret key).
    public static func load(from path: String) throws(SaliencyError) -> CurveKeyPair {
        let fields = try readFields(path)
        guard let sec = fields["secret"] else { throw SaliencyError(.invalidConfiguration, "\(path) has no 'secret = <40 Z85 chars>' line") }
        let pair = try CurveKeyPair(secretKey: sec)
        if let pub = fields["public"], pub != pair.publicKey {
            throw SaliencyError(.invalidConfiguration, "\(path): the public key does not belong to the secret key")
        }
        return pair
    }

    /// Reads the `public` key of a key file (public-only or full).
    public static func loadPublicKey(from path: String) throws(SaliencyError) -> String {
        guard let pub = try readFields(path)["public"] else {
            throw SaliencyError(.invalidConfiguration, "\(path) has no 'public = <40 Z85 chars>' line")
        }
        return pub
    }

    private static func readFields(_ path: String) throws(SaliencyError) -> [String: String] {
        guard let data = FileManager.default.contents(atPath: path), data.count <= 4096 else {
            throw SaliencyError(.io, "cannot read key file \(path) (missing, unreadable or over 4 KiB)")
        }
        var fields: [String: String] = [:]
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty || t.hasPrefix("#") { continue }
            let parts = t.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, parts[0] == "public" || parts[0] == "secret" else {
                throw SaliencyError(.invalidConfiguration, "\(path):\(n + 1): expected 'public = …' or 'secret = …'")
            }
            guard Z85.isKey(parts[1]) else {
                throw SaliencyError(.invalidConfiguration, "\(path):\(n + 1): \(parts[0]) key must be 40 Z85 characters")
            }
            fields[parts[0]] = parts[1]
        }
        return fields
    }

    private static func write(_ text: String, to path: String, permissions: Int) throws(SaliencyError) {
        let ok = FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: permissions])
        guard ok else { throw SaliencyError(.io, "cannot write key file \(path)") }
        // createFile keeps the mode of an existing file: enforce it.
        try? FileManager.default.setAttributes([.posixPermissions: permissions], ofItemAtPath: path)
    }
}
