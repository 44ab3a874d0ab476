import Foundation
import SaliencyCore
import SaliencyStream
import Testing

/// The wire contract (docs/protocol.md) against golden files captured from a real daemon
/// (Fixtures/wire/generate.py): every reply and alert decodes into its Swift type and re-encodes
/// byte for byte; every request parses and is written back byte for byte; docs/protocol.md shows
/// each of them verbatim.
@Suite struct WireTests {
    /// The repository root, from this file's path (fixtures and docs are read in place).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let dir = root + "/Tests/StreamTests/Fixtures/wire"

    static func fixture(_ name: String) throws -> [UInt8] {
        var b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name).json")))
        if b.last == UInt8(ascii: "\n") { b.removeLast() }
        return b
    }

    static var names: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted()
    }

    func roundTrip<T: Codable & Equatable>(_ name: String, _ type: T.Type) throws {
        let bytes = try Self.fixture(name)
        let value = try Wire.decode(T.self, from: bytes)
        #expect(Wire.encode(value) == bytes, "\(name): re-encoded differs")
        #expect(try Wire.decode(T.self, from: Wire.encode(value)) == value)
    }

    @Test func repliesDecodeIntoTheirTypesAndReencodeByteForByte() throws {
        try roundTrip("reply-status", StatusReply.self)
        try roundTrip("reply-top", TopReply.self)
        try roundTrip("reply-filter", FilterReply.self)
        try roundTrip("reply-alerts", AlertsReply.self)
        try roundTrip("reply-snapshot", SnapshotReply.self)
        try roundTrip("reply-reset", ResetReply.self)
        try roundTrip("reply-error-not-found", ErrorReply.self)
        try roundTrip("reply-error-bad-request", ErrorReply.self)
        try roundTrip("alert", AlertMessage.self)
        try roundTrip("reply-top-two-sided", TopReply.self)
        try roundTrip("reply-filter-two-sided", FilterReply.self)
        // A model watching both tails says the direction; an upper-only model's replies omit it.
        #expect(try Wire.decode(TopReply.self, from: try Self.fixture("reply-top-two-sided")).top.map(\.direction) == ["lower", "upper", "lower"])
        #expect(try Wire.decode(FilterReply.self, from: try Self.fixture("reply-filter-two-sided")).lower?.firing == true)
        #expect(try Wire.decode(TopReply.self, from: try Self.fixture("reply-top")).top.allSatisfy { $0.direction == nil })
        #expect(try Wire.decode(AlertMessage.self, from: try Self.fixture("alert")).labels["direction"] == "upper")
        // Every reply file is covered above (a new one must be added here).
        #expect(Self.names.filter { $0.hasPrefix("reply-") }.count == 10)
    }

    @Test func errorsComeBackAsTheDaemonsCodes() throws {
        do {
            _ = try Wire.reply(TopReply.self, from: try Self.fixture("reply-error-not-found"))
            Issue.record("an error reply decoded as a TopReply")
        } catch let e as SaliencyError {
            #expect(e.code == .notFound)
        }
        #expect(try Wire.reply(TopReply.self, from: try Self.fixture("reply-top")).top.count == 3)
    }

    @Test func requestsParseAndAreWrittenBackByteForByte() throws {
        let requests = Self.names.filter { $0.hasPrefix("request-") }
        #expect(requests.count == 9)
        for name in requests {
            let bytes = try Self.fixture(name)
            let r = try QueryRequest.parse(bytes)
            #expect(r.body == bytes, "\(name): \(String(decoding: r.body, as: UTF8.self))")
        }
    }

    /// The alert writer on the hot path (`AlertMessage.json()`, hand-written for speed) produces
    /// exactly what the one encoder produces, also for ±∞, NaN, whole numbers and control characters.
    @Test func theHotPathAlertWriterMatchesTheEncoder() throws {
        var a = try Wire.decode(AlertMessage.self, from: try Self.fixture("alert"))
        #expect(a.json() == Wire.encode(a))
        a.score = .infinity; a.p = 0; a.value = 1.0; a.threshold = -.infinity; a.extreme_threshold = .nan; a.resent = true
        a.annotations["summary"] = "tab\there \"quoted\" back\\slash \u{1}\u{1f}\u{7f} é/ü \u{8}\u{c}\r\n"
        a.labels["layer"] = "features.0/conv"
        #expect(a.json() == Wire.encode(a))
        let back = try Wire.decode(AlertMessage.self, from: a.json())
        #expect(back.score == .infinity && back.threshold == -.infinity && back.extreme_threshold!.isNaN && back.annotations == a.annotations)
    }

    @Test func docsShowEveryFixtureVerbatim() throws {
        let docs = try String(contentsOfFile: Self.root + "/docs/protocol.md", encoding: .utf8)
        for name in Self.names {
            let text = String(decoding: try Self.fixture(name), as: UTF8.self)
            #expect(docs.contains(text), "docs/protocol.md does not show \(name).json")
        }
    }

    @Test func everyRejectReasonIsDocumented() throws {
        let docs = try String(contentsOfFile: Self.root + "/docs/operations.md", encoding: .utf8)
        for r in RejectReason.allCases { #expect(docs.contains("`\(r.rawValue)`"), "docs/operations.md does not list \(r.rawValue)") }
    }
}
