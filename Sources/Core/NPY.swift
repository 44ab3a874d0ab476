/// Minimal reader/writer for NumPy `.npy` files (format 1.0/2.0/3.0): float32 or float64,
/// little-endian, C order, 1-D or 2-D. Pure: bytes in, values out.
public struct NPYArray: Sendable, Hashable {
    /// Shape: `[n]` or `[rows, cols]`.
    public var shape: [Int]
    /// Values in C order, converted to Float32 (saliency rows are float32 on the wire).
    public var values: [Float]

    public init(shape: [Int], values: [Float]) {
        self.shape = shape
        self.values = values
    }

    public var rows: Int { shape.count == 2 ? shape[0] : 1 }
    public var columns: Int { shape.count == 2 ? shape[1] : (shape.first ?? 0) }

    /// Parses `.npy` bytes. Errors say what is unsupported and how to convert.
    public static func parse(_ bytes: [UInt8]) throws(SaliencyError) -> NPYArray {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.invalidInput, m) }
        guard bytes.count >= 10, bytes[0] == 0x93, Array(bytes[1...5]) == Array("NUMPY".utf8) else {
            throw bad("not a .npy file (missing \\x93NUMPY magic)")
        }
        let major = bytes[6]
        let headerLen: Int
        let start: Int
        if major == 1 {
            headerLen = Int(bytes[8]) | Int(bytes[9]) << 8
            start = 10
        } else if major == 2 || major == 3 {
            guard bytes.count >= 12 else { throw bad("truncated .npy header") }
            headerLen = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
            start = 12
        } else {
            throw bad("unsupported .npy format version \(major)")
        }
        guard bytes.count >= start + headerLen else { throw bad("truncated .npy header") }
        let header = String(decoding: bytes[start..<(start + headerLen)], as: UTF8.self)
        func field(_ key: String) -> Substring? {
            let needle = Array("'\(key)':")
            let chars = Array(header)
            guard chars.count >= needle.count else { return nil }
            for i in 0...(chars.count - needle.count) where Array(chars[i..<(i + needle.count)]) == needle {
                return Substring(String(chars[(i + needle.count)...])).drop { $0 == " " }
            }
            return nil
        }
        guard let descr = field("descr"), let q = descr.first, q == "'" || q == "\"" else { throw bad("no descr in .npy header") }
        let descrValue = descr.dropFirst().prefix { $0 != q }
        let width: Int
        switch descrValue {
        case "<f4", "=f4", "|f4": width = 4
        case "<f8", "=f8", "|f8": width = 8
        default: throw bad("dtype \(descrValue) is not supported; convert with arr.astype('<f4')")
        }
        if let fo = field("fortran_order"), fo.hasPrefix("True") { throw bad("Fortran-ordered arrays are not supported; save np.ascontiguousarray(arr)") }
        guard let sh = field("shape"), sh.first == "(", let close = sh.firstIndex(of: ")") else { throw bad("no shape in .npy header") }
        let dims = sh[sh.index(after: sh.startIndex)..<close].split(separator: ",").map { $0.trimmingSpaces }.filter { !$0.isEmpty }
        var shape: [Int] = []
        for d in dims {
            guard let v = Int(d), v >= 0 else { throw bad("bad shape entry '\(d)'") }
            shape.append(v)
        }
        guard shape.count == 1 || shape.count == 2 else { throw bad("expected a 1-D or 2-D array, got shape \(shape)") }
        let count = shape.reduce(1, *)
        let dataStart = start + headerLen
        guard bytes.count - dataStart >= count * width else {
            throw bad("truncated .npy data: expected \(count * width) bytes, found \(bytes.count - dataStart)")
        }
        var values = [Float](repeating: 0, count: count)
        bytes.withUnsafeBytes { raw in
            let p = raw.baseAddress! + dataStart
            if width == 4 {
                for i in 0..<count { values[i] = Float(bitPattern: UInt32(littleEndian: (p + 4 * i).loadUnaligned(as: UInt32.self))) }
            } else {
                for i in 0..<count { values[i] = Float(Double(bitPattern: UInt64(littleEndian: (p + 8 * i).loadUnaligned(as: UInt64.self)))) }
            }
        }
        return NPYArray(shape: shape, values: values)
    }

    /// Serializes as a float32 little-endian `.npy` (format 1.0).
    public func serialized() -> [UInt8] {
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': \(shapeText), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
        let n = header.utf8.count
        out += [UInt8(n & 0xff), UInt8(n >> 8)]
        out += Array(header.utf8)
        out.reserveCapacity(out.count + 4 * values.count)
        for v in values {
            let b = v.bitPattern.littleEndian
            out += [UInt8(b & 0xff), UInt8((b >> 8) & 0xff), UInt8((b >> 16) & 0xff), UInt8(b >> 24)]
        }
        return out
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while let f = s.first, f == " " { s = s.dropFirst() }
        while let l = s.last, l == " " { s = s.dropLast() }
        return s
    }
}
