import Foundation
import SaliencyCore
import SaliencyStream

/// Which CURVE client keys may announce which models (`security.schema_keys_file`,
/// docs/security.md). One line per key: the client's Z85 public key, then the model names it may
/// announce, or `*` for any. A line whose first word is not a key and starts with `#` is a comment,
/// and a lone `#` word starts an inline comment (Z85 keys themselves may contain `#`). A schema from a key not listed, or for a model
/// its line does not name, is refused (`forbidden_schema`). Predictions need no entry: they only
/// reach models whose schema was admitted.
struct SchemaKeys: Sendable, Hashable {
    private var models: [String: Set<String>] = [:]

    init(lines: [String: Set<String>]) { models = lines }

    static func load(path: String) throws(SaliencyError) -> SchemaKeys {
        guard let d = FileManager.default.contents(atPath: path) else {
            throw SaliencyError(.invalidConfiguration, "cannot read security.schema_keys_file '\(path)'")
        }
        guard !d.contains(0), let text = String(data: d, encoding: .utf8) else {
            throw SaliencyError(.invalidConfiguration, "'\(path)' is not UTF-8 text")
        }
        var out: [String: Set<String>] = [:]
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let words = raw.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard let key = words.first else { continue }
            // Z85 has '#' in its alphabet: a 40-character key is a key even if it starts with '#';
            // otherwise a line starting with '#' is a comment, and a lone "#" word starts one.
            guard Z85.isKey(key) else {
                if key.hasPrefix("#") { continue }
                throw SaliencyError(.invalidConfiguration, "'\(path)' line \(i + 1): '\(key.prefix(48))' is not a 40-character Z85 public key")
            }
            let models = words.dropFirst().prefix { $0 != "#" }
            guard !models.isEmpty else {
                throw SaliencyError(.invalidConfiguration, "'\(path)' line \(i + 1): name the models this key may announce, or * for any")
            }
            out[key, default: []].formUnion(models)
        }
        return SchemaKeys(lines: out)
    }

    /// Whether `key` (the ZAP user id of the sender; nil without one) may announce `model`.
    func allows(key: String?, model: String) -> Bool {
        guard let key, let names = models[key] else { return false }
        return names.contains("*") || names.contains(model)
    }

    var keyCount: Int { models.count }
}
