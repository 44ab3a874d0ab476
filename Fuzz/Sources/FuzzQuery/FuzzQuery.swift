// libFuzzer target: query request bodies (docs/protocol.md §4), as received on the REP socket.
// Acceptable: a QueryRequest or a thrown SaliencyError. The error reply the daemon would send
// must be valid JSON that carries the error's code.
import Foundation
import SaliencyCore
import SaliencyStream

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let raw = UnsafeRawBufferPointer(start: data, count: size)
    do {
        _ = try QueryRequest.parse(raw)
    } catch {
        let reply = QueryReply.error(error)
        guard let obj = try? JSONSerialization.jsonObject(with: Data(reply)) as? [String: Any],
              let err = obj["error"] as? [String: Any], err["code"] as? String == error.code.rawValue,
              err["message"] as? String == error.message else {
            fatalError("error reply is not the JSON it should be: \(String(decoding: reply, as: UTF8.self))")
        }
    }
    return 0
}
