import Foundation
import Testing
@testable import SaliencyMonitor

/// The configuration's TOML reader (Sources/Monitor/TOMLReader.swift): the subset it reads, with
/// values as TOML 1.0 defines them, and a clear error (never a trap) for everything else.
@Suite struct TOMLReaderTests {
    typealias V = TOMLReader.Value

    func parse(_ s: String) throws(TOMLReader.ParseError) -> TOMLReader.Document { try TOMLReader.parse(s) }

    func error(_ s: String) -> TOMLReader.ParseError? {
        do { _ = try parse(s); return nil } catch { return error }
    }

    @Test func valuesAsTOMLDefinesThem() throws {
        let doc = try parse("""
        # a comment
        [feed]   # trailing comment
        endpoint = "tcp://127.0.0.1:5560"
        "quoted key" = 'C:\\literal\\path'
        escapes = "tab\\t quote\\" back\\\\ nl\\n u\\u00e9 U\\U0001F600"
        bind = true
        off = false
        int = 1_000_000
        neg = -42
        hex = 0xff
        oct = 0o17
        bin = 0b101
        float = 6.02e23
        small = 1e-4
        plus = +1.5
        inf = inf
        ninf = -inf
        nan = nan
        zero = 0
        list = [ "a", 'b',
                 "c", ]   # across lines, trailing comma
        nested = [[1, 2], [3]]
        empty = []

        [state]\r
        snapshot_interval = 60.0\r
        """ + "\n")
        let f = try #require(doc["feed"])
        #expect(f["endpoint"] == .string("tcp://127.0.0.1:5560"))
        #expect(f["quoted key"] == .string("C:\\literal\\path"))
        #expect(f["escapes"] == .string("tab\t quote\" back\\ nl\n u\u{e9} U\u{1F600}"))
        #expect(f["bind"] == .bool(true) && f["off"] == .bool(false))
        #expect(f["int"] == .int(1_000_000) && f["neg"] == .int(-42) && f["hex"] == .int(255) && f["oct"] == .int(15) && f["bin"] == .int(5))
        #expect(f["float"] == .double(6.02e23) && f["small"] == .double(1e-4) && f["plus"] == .double(1.5))
        #expect(f["inf"] == .double(.infinity) && f["ninf"] == .double(-.infinity))
        if case .double(let x)? = f["nan"] { #expect(x.isNaN) } else { Issue.record("nan") }
        #expect(f["zero"] == .int(0))
        #expect(f["list"] == .array([.string("a"), .string("b"), .string("c")]))
        #expect(f["nested"] == .array([.array([.int(1), .int(2)]), .array([.int(3)])]))
        #expect(f["empty"] == .array([]))
        #expect(doc["state"]?["snapshot_interval"] == .double(60))
    }

    @Test func everythingElseIsAnErrorWithItsPlace() {
        for (text, needle) in [
            ("[=", "key"),                                  // toml++ aborted the daemon on these two bytes
            ("[", "key"), ("[]", "key"), ("[a", "']'"), ("[[a]]", "arrays of tables"), ("[a.b.c]", "at most two deep"), ("[a.]", "key"),
            ("[a.b]\n[a.b]", "twice"), ("[a]\nb = 1\n[a.b]", "already a key"), ("[a.b]\n[a]\nb = 1", "is a table"), ("[a.b]\nc = 1\nc = 2", "twice in [a.b]"),
            ("[a]\nb.c = 1", "dotted"), ("[a]\nb = ", "value"), ("[a]\nb", "'='"), ("b = 1", "outside"),
            ("[a]\nb = 1\nb = 2", "twice"), ("[a]\n[a]", "twice"), ("[a]\nb = \"x", "unterminated"),
            ("[a]\nb = \"\"\"x\"\"\"", "multi-line"), ("[a]\nb = {x = 1}", "inline"), ("[a]\nb = 1979-05-27", "not a value"),
            ("[a]\nb = 007", "not a value"), ("[a]\nb = 1__0", "not a value"), ("[a]\nb = 1.", "not a value"),
            ("[a]\nb = yes", "not a value"), ("[a]\nb = 1 2", "after the value"), ("[a]\nb = \"\\q\"", "escape"),
            ("[a]\nb = \"\\uD800\"", "scalar"), ("[a]\nb = [1, 2", "','"), ("[a]\nb = \"a\u{1}b\"", "control"),
            ("[a]\nb = 1\r", "carriage return"), ("[a]\nb = " + String(repeating: "[", count: 20) + String(repeating: "]", count: 20), "nest"),
        ] {
            let e = error(text)
            #expect(e?.message.contains(needle) == true, "\(text.debugDescription) → \(e.map { "\($0.message)" } ?? "accepted")")
        }
        #expect(error("[a]\n\n  x = [1,\n2,\n3 4]")?.line == 5)
    }

    /// One level of nesting, for `[models.NAME]`: bare or quoted parts, spaces around the dot, and
    /// the parent may also be declared (before or after) as long as no key collides with a child.
    @Test func twoPartTableNames() throws {
        let doc = try parse("""
        [models.fmnist-cnn]
        tails = "both"
        [ models . "net:v2" ]   # quoted part: any string
        q = 1e-3
        [models]
        [feed]
        bind = true
        """)
        #expect(doc.subtables["models"]?["fmnist-cnn"] == ["tails": .string("both")])
        #expect(doc.subtables["models"]?["net:v2"] == ["q": .double(1e-3)])
        #expect(doc["models"] == [:] && doc["feed"]?["bind"] == .bool(true))
        #expect(doc.subtables.count == 1 && doc.keys.sorted() == ["feed", "models"])
    }

    @Test func theShippedExampleReadsAsTheEmbeddedDefaults() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let c = try DaemonConfiguration.load(path: root + "/systemd/saliencyd.toml")
        var expected = DaemonConfiguration()
        expected.state.directory = c.state.directory
        #expect(c == expected)
    }

    @Test func randomBytesNeverTrap() {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("[]=\"'#.,{}\\ \t\n\rabc_-019+eE".unicodeScalars)
        for _ in 0..<20_000 {
            var s = ""
            for _ in 0..<Int.random(in: 0...40, using: &rng) { s.unicodeScalars.append(alphabet.randomElement(using: &rng)!) }
            _ = try? TOMLReader.parse(s)
        }
    }
}
