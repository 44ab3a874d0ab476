import SaliencyCore

/// The configuration file's TOML, read by a strict reader of the subset saliencyd's settings use
/// (docs/security.md). It replaced toml++ (through TOMLKit), which aborted the process on a
/// two-byte file (`[=`: an assertion in its table-header parser, found by the `FuzzConfig`
/// target) — fatal on a SIGHUP reload — and read its input as a C string.
///
/// Supported (TOML 1.0): comments; `[table]` headers with bare or quoted names; `key = value`
/// with bare or quoted keys; basic (`"…"` with TOML escapes) and literal (`'…'`) strings; integers
/// (decimal with `_`, `0x`/`0o`/`0b`); floats (decimal, exponent, `inf`, `nan`, signed); booleans;
/// arrays of those, across lines, with a trailing comma allowed. Everything else TOML has (dotted
/// keys, inline tables, arrays of tables, multi-line strings, dates) is refused with the line and
/// column, as are duplicate keys and tables. Never traps, whatever the bytes (fuzzed).
///
/// One level of nesting: `[parent.child]` headers (each part bare or quoted), for the per-model
/// tables `[models.NAME]`; deeper names (`[a.b.c]`) are refused, and so is a child table whose name
/// is also a key of its parent (TOML's "defined twice").
enum TOMLReader {
    enum Value: Equatable, Sendable {
        case string(String), int(Int), double(Double), bool(Bool), array([Value])

        var typeName: String {
            switch self {
            case .string: "a string"
            case .int: "an integer"
            case .double: "a float"
            case .bool: "a boolean"
            case .array: "an array"
            }
        }
    }

    /// Tables (by name) of key/value pairs, in no particular order.
    struct Document: Equatable, Sendable {
        /// `[name]` tables.
        var tables: [String: [String: Value]] = [:]
        /// `[parent.child]` tables, by parent, then child.
        var subtables: [String: [String: [String: Value]]] = [:]
        subscript(name: String) -> [String: Value]? { tables[name] }
        var keys: Dictionary<String, [String: Value]>.Keys { tables.keys }
    }

    struct ParseError: Error, Equatable {
        var line: Int
        var column: Int
        var message: String
    }

    static let maxArrayDepth = 8

    static func parse(_ text: String) throws(ParseError) -> Document {
        var p = Parser(Array(text.unicodeScalars))
        return try p.document()
    }

    private struct Parser {
        let s: [Unicode.Scalar]
        var i = 0
        var line = 1
        var lineStart = 0

        init(_ s: [Unicode.Scalar]) { self.s = s }

        func fail(_ m: String) -> ParseError { ParseError(line: line, column: i - lineStart + 1, message: m) }

        var atEnd: Bool { i >= s.count }
        var peek: Unicode.Scalar? { i < s.count ? s[i] : nil }

        mutating func advance() {
            if s[i] == "\n" { line += 1; lineStart = i + 1 }
            i += 1
        }

        mutating func skipSpaces() { while let c = peek, c == " " || c == "\t" { i += 1 } }

        /// Spaces, newlines and comments (inside arrays).
        mutating func skipBlank() throws(ParseError) {
            while let c = peek {
                if c == " " || c == "\t" || c == "\n" { advance() } else if c == "\r" { try newline() } else if c == "#" { try comment() } else { break }
            }
        }

        mutating func comment() throws(ParseError) {
            // `#` to the end of the line; control characters other than tab are not allowed.
            i += 1
            while let c = peek, c != "\n" {
                if c == "\r", i + 1 < s.count, s[i + 1] == "\n" { break }
                if (c.value < 0x20 && c != "\t") || c.value == 0x7F { throw fail("control character U+\(String(c.value, radix: 16)) in a comment") }
                i += 1
            }
        }

        mutating func newline() throws(ParseError) {
            if peek == "\r" {
                guard i + 1 < s.count, s[i + 1] == "\n" else { throw fail("a carriage return must be followed by a newline") }
                i += 1
            }
            if peek == "\n" { advance() }
        }

        /// After a header or a key/value pair: spaces, an optional comment, then the end of the line.
        mutating func endOfLine() throws(ParseError) {
            skipSpaces()
            if peek == "#" { try comment() }
            guard atEnd || peek == "\n" || peek == "\r" else { throw fail("unexpected '\(peek!)' after the value; one key = value per line") }
            if !atEnd { try newline() }
        }

        mutating func document() throws(ParseError) -> Document {
            var doc = Document()
            /// The table key/value pairs go to: `[name]` (child nil) or `[name.child]`.
            var current: (name: String, child: String?)? = nil
            var declared = Set<String>()
            var declaredChildren: [String: Set<String>] = [:]
            while true {
                try skipBlank()
                guard let c = peek else { break }
                if c == "[" {
                    i += 1
                    if peek == "[" { throw fail("arrays of tables ([[…]]) are not used by saliencyd's configuration") }
                    skipSpaces()
                    let name = try key()
                    skipSpaces()
                    var child: String? = nil
                    if peek == "." {
                        i += 1
                        skipSpaces()
                        let k = try key()
                        skipSpaces()
                        if peek == "." { throw fail("dotted table names nest at most two deep in saliencyd's configuration ([\(name).NAME])") }
                        child = k
                    }
                    guard peek == "]" else { throw fail("expected ']' to close the table header [\(name)\(child.map { "." + $0 } ?? "")") }
                    i += 1
                    if let child {
                        guard declaredChildren[name, default: []].insert(child).inserted else { throw fail("table [\(name).\(child)] is defined twice") }
                        guard doc.tables[name]?[child] == nil else { throw fail("table [\(name).\(child)] is defined twice ('\(child)' is already a key in [\(name)])") }
                        doc.subtables[name, default: [:]][child] = [:]
                    } else {
                        guard declared.insert(name).inserted else { throw fail("table [\(name)] is defined twice") }
                        if doc.tables[name] == nil { doc.tables[name] = [:] }
                    }
                    current = (name, child)
                    try endOfLine()
                } else {
                    let k = try key()
                    skipSpaces()
                    if peek == "." { throw fail("dotted keys are not used by saliencyd's configuration; put '\(k)' under its [table]") }
                    guard peek == "=" else { throw fail("expected '=' after the key '\(k)'") }
                    i += 1
                    skipSpaces()
                    let v = try value(depth: 0)
                    guard let table = current else { throw fail("'\(k)' is outside any [table]; every setting belongs to a section such as [feed]") }
                    if let child = table.child {
                        guard doc.subtables[table.name]![child]![k] == nil else { throw fail("'\(k)' is set twice in [\(table.name).\(child)]") }
                        doc.subtables[table.name]![child]![k] = v
                    } else {
                        guard doc.tables[table.name]![k] == nil else { throw fail("'\(k)' is set twice in [\(table.name)]") }
                        guard doc.subtables[table.name]?[k] == nil else { throw fail("'\(k)' is set in [\(table.name)] but [\(table.name).\(k)] is a table") }
                        doc.tables[table.name]![k] = v
                    }
                    try endOfLine()
                }
            }
            return doc
        }

        mutating func key() throws(ParseError) -> String {
            guard let c = peek else { throw fail("expected a key") }
            if c == "\"" { return try basicString() }
            if c == "'" { return try literalString() }
            var out = ""
            while let c = peek, ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || c == "_" || c == "-" {
                out.unicodeScalars.append(c)
                i += 1
            }
            guard !out.isEmpty else { throw fail("expected a key (letters, digits, '_' or '-'), got '\(c)'") }
            return out
        }

        mutating func value(depth: Int) throws(ParseError) -> Value {
            guard let c = peek else { throw fail("expected a value") }
            switch c {
            case "\"":
                if i + 2 < s.count, s[i + 1] == "\"", s[i + 2] == "\"" { throw fail("multi-line strings are not used by saliencyd's configuration") }
                return .string(try basicString())
            case "'":
                if i + 2 < s.count, s[i + 1] == "'", s[i + 2] == "'" { throw fail("multi-line strings are not used by saliencyd's configuration") }
                return .string(try literalString())
            case "[":
                guard depth < maxArrayDepth else { throw fail("arrays nest more than \(maxArrayDepth) deep") }
                i += 1
                var items: [Value] = []
                while true {
                    try skipBlank()
                    if peek == "]" { i += 1; break }
                    items.append(try value(depth: depth + 1))
                    try skipBlank()
                    if peek == "," { i += 1; continue }
                    if peek == "]" { i += 1; break }
                    throw fail("expected ',' or ']' in the array")
                }
                return .array(items)
            case "{":
                throw fail("inline tables are not used by saliencyd's configuration")
            default:
                var word = ""
                while let c = peek, !(c == " " || c == "\t" || c == "\n" || c == "\r" || c == "#" || c == "," || c == "]") {
                    word.unicodeScalars.append(c)
                    i += 1
                }
                guard !word.isEmpty else { throw fail("expected a value, got '\(c)'") }
                if word == "true" { return .bool(true) }
                if word == "false" { return .bool(false) }
                if let v = Self.number(word) { return v }
                throw fail("'\(word.prefix(40))' is not a value saliencyd reads (strings need quotes: \"…\")")
            }
        }

        /// TOML integers and floats (no dates).
        static func number(_ w: String) -> Value? {
            var body = Substring(w)
            var sign = ""
            if body.first == "+" || body.first == "-" { sign = body.first == "-" ? "-" : ""; body = body.dropFirst() }
            if body == "inf" { return .double(sign == "-" ? -.infinity : .infinity) }
            if body == "nan" { return .double(.nan) }
            for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] where body.hasPrefix(prefix) {
                guard sign.isEmpty, let digits = underscores(body.dropFirst(2)), let v = Int(digits, radix: radix) else { return nil }
                return .int(v)
            }
            guard let digits = underscores(body), let first = digits.first, first.isASCII, first.isNumber else { return nil }
            // No leading zeros ("007"), as TOML says; "0", "0.5" and "0e1" are fine.
            if digits.count > 1, first == "0", let second = digits.dropFirst().first, second.isNumber { return nil }
            if digits.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) {
                guard digits.allSatisfy({ $0.isASCII && ($0.isNumber || "eE.+-".contains($0)) }),
                      !digits.hasSuffix("."), !digits.contains(".e"), !digits.contains(".E"), let v = Double(sign + digits), v.isFinite else { return nil }
                return .double(v)
            }
            guard digits.allSatisfy({ $0.isASCII && $0.isNumber }), let v = Int(sign + digits) else { return nil }
            return .int(v)
        }

        /// Removes underscores that sit between two digits; nil if any is elsewhere.
        static func underscores(_ s: Substring) -> String? {
            let a = Array(s)
            var out = ""
            for (k, c) in a.enumerated() {
                if c == "_" {
                    guard k > 0, k + 1 < a.count, a[k - 1].isHexDigit, a[k + 1].isHexDigit else { return nil }
                    continue
                }
                out.append(c)
            }
            return out
        }

        mutating func basicString() throws(ParseError) -> String {
            i += 1
            var out = ""
            while true {
                guard let c = peek else { throw fail("unterminated string") }
                if c == "\"" { i += 1; return out }
                if c == "\n" || c == "\r" { throw fail("unterminated string (strings end on their line)") }
                if (c.value < 0x20 && c != "\t") || c.value == 0x7F { throw fail("control character U+\(String(c.value, radix: 16)) in a string; write it as an escape") }
                if c == "\\" {
                    i += 1
                    guard let e = peek else { throw fail("unterminated escape") }
                    i += 1
                    switch e {
                    case "b": out.unicodeScalars.append("\u{8}")
                    case "t": out.unicodeScalars.append("\t")
                    case "n": out.unicodeScalars.append("\n")
                    case "f": out.unicodeScalars.append("\u{C}")
                    case "r": out.unicodeScalars.append("\r")
                    case "\"": out.unicodeScalars.append("\"")
                    case "\\": out.unicodeScalars.append("\\")
                    case "u", "U":
                        let n = e == "u" ? 4 : 8
                        guard i + n <= s.count else { throw fail("\\\(e) needs \(n) hex digits") }
                        var hex = ""
                        for k in 0..<n { hex.unicodeScalars.append(s[i + k]) }
                        guard hex.allSatisfy(\.isHexDigit), let v = UInt32(hex, radix: 16), let u = Unicode.Scalar(v) else {
                            throw fail("\\\(e)\(hex) is not a Unicode scalar value")
                        }
                        i += n
                        out.unicodeScalars.append(u)
                    default: throw fail("unknown escape \\\(e)")
                    }
                    continue
                }
                out.unicodeScalars.append(c)
                i += 1
            }
        }

        mutating func literalString() throws(ParseError) -> String {
            i += 1
            var out = ""
            while true {
                guard let c = peek else { throw fail("unterminated string") }
                if c == "'" { i += 1; return out }
                if c == "\n" || c == "\r" { throw fail("unterminated string (strings end on their line)") }
                if (c.value < 0x20 && c != "\t") || c.value == 0x7F { throw fail("control character U+\(String(c.value, radix: 16)) in a string") }
                out.unicodeScalars.append(c)
                i += 1
            }
        }
    }
}
