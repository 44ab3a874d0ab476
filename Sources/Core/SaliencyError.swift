/// The one error type of saliencyd's libraries: a stable code, a message that says
/// what to do, and the call site that raised it.
public struct SaliencyError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Stable, machine-readable error codes. New codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let invalidSchema = Code("invalid_schema")
        public static let invalidConfiguration = Code("invalid_configuration")
        public static let invalidInput = Code("invalid_input")
        public static let wrongWidth = Code("wrong_width")
        public static let nonFinite = Code("non_finite")
        public static let negative = Code("negative")
        public static let malformedFrame = Code("malformed_frame")
        public static let unknownSchema = Code("unknown_schema")
        public static let unsupportedVersion = Code("unsupported_version")
        public static let io = Code("io")
        public static let corruptState = Code("corrupt_state")
        public static let transport = Code("transport")
        public static let badRequest = Code("bad_request")
        public static let notFound = Code("not_found")
        public static let forbidden = Code("forbidden")
        public static let notReady = Code("not_ready")
    }

    public let code: Code
    public let message: String
    public let file: String
    public let line: Int

    public init(_ code: Code, _ message: String, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.file = file
        self.line = line
    }

    public var description: String { "\(code): \(message)" }

    public static func == (a: Self, b: Self) -> Bool { a.code == b.code && a.message == b.message }
    public func hash(into h: inout Hasher) { h.combine(code); h.combine(message) }
}
