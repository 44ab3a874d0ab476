/// The bracket structure of a JSON text, found by one pass over its bytes outside strings, before
/// any parser runs: how deep arrays/objects nest (requests are refused past 16, which bounds the
/// parser's recursion) and how many objects sit inside the top-level one (schemas with more layer
/// objects than allowed are refused before decoding). No allocation; never traps.
enum JSONShape {
    static func scan(_ raw: UnsafeRawBufferPointer) -> (maxDepth: Int, nestedObjects: Int) {
        var depth = 0, maxDepth = 0, objects = 0, inString = false, escaped = false
        for b in raw {
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch b {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                if b == UInt8(ascii: "{"), depth >= 1 { objects += 1 }
                depth += 1
                maxDepth = max(maxDepth, depth)
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth -= 1
            default: break
            }
        }
        return (maxDepth, objects)
    }
}
