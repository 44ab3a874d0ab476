import Foundation
import SaliencyCore
import Testing

@testable import SaliencyStream

@Suite("QueryRequest")
struct QueryRequestTests {
    func parse(_ s: String) -> Result<QueryRequest, SaliencyError> {
        do throws(SaliencyError) { return .success(try QueryRequest.parse(Array(s.utf8))) } catch { return .failure(error) }
    }
    func error(_ s: String) -> SaliencyError? {
        if case .failure(let e) = parse(s) { return e }
        return nil
    }
    func ok(_ s: String) -> QueryRequest? { try? parse(s).get() }

    @Test func valid() {
        #expect(ok(#"{"op":"status"}"#) == .status)
        #expect(ok(#"{"op":"snapshot"}"#) == .snapshot)
        #expect(ok(#"{"op":"reset","model":"m"}"#) == .reset(model: "m"))
        #expect(ok(#"{"op":"top","model":"m"}"#) == .top(model: "m", k: 20, by: .pot, window: .latest))
        #expect(ok(#"{"op":"top","model":"m","k":5,"by":"zscore","window":64}"#) == .top(model: "m", k: 5, by: .zscore, window: .recent(64)))
        #expect(ok(#"{"op":"top","model":"m","window":"latest","k":1000}"#) == .top(model: "m", k: 1000, by: .pot, window: .latest))
        #expect(ok(#"{"op":"filter","model":"m","filter":21}"#) == .filter(model: "m", selector: .index(21)))
        #expect(ok(#"{"op":"filter","model":"m","layer":"conv2","channel":5}"#) == .filter(model: "m", selector: .channel(layer: "conv2", channel: 5)))
        #expect(ok(#"{"op":"alerts"}"#) == .alerts(since: nil, active: false))
        #expect(ok(#"{"op":"alerts","since":42,"active":true}"#) == .alerts(since: 42, active: true))
        #expect(ok(#" {"op" : "status"} "#) == .status)
        #expect(ok(#"{"op":"reset","model":"m"}"#)?.isAdmin == true)
    }

    @Test func invalid() {
        #expect(error("")?.code == .badRequest)
        #expect(error("[]")?.code == .badRequest)
        #expect(error("\"status\"")?.code == .badRequest)
        #expect(error("{}")?.message.contains("missing \"op\"") == true)
        #expect(error(#"{"op":1}"#)?.message.contains("must be a string") == true)
        let unknown = error(#"{"op":"explode"}"#)
        #expect(unknown?.code == .unknownOp)
        #expect(unknown?.message.contains("status, top, filter, alerts, snapshot, reset") == true)
        #expect(error(#"{"op":"top"}"#)?.message.contains("missing \"model\"") == true)
        #expect(error(#"{"op":"top","model":"a.b"}"#)?.code == .badRequest)
        #expect(error(#"{"op":"top","model":3}"#)?.message.contains("must be a string") == true)
        #expect(error(#"{"op":"top","model":"m","k":0}"#)?.message.contains("1...1000") == true)
        #expect(error(#"{"op":"top","model":"m","k":1001}"#)?.code == .badRequest)
        #expect(error(#"{"op":"top","model":"m","k":"5"}"#)?.message.contains("integer") == true)
        #expect(error(#"{"op":"top","model":"m","k":2.5}"#)?.code == .badRequest)
        #expect(error(#"{"op":"top","model":"m","k":true}"#)?.code == .badRequest)
        #expect(error(#"{"op":"top","model":"m","by":"max"}"#)?.message.contains("pot") == true)
        #expect(error(#"{"op":"top","model":"m","window":"all"}"#)?.message.contains("latest") == true)
        #expect(error(#"{"op":"top","model":"m","window":0}"#)?.code == .badRequest)
        #expect(error(#"{"op":"top","model":"m","K":5}"#)?.message.contains("unexpected field \"K\"") == true)
        #expect(error(#"{"op":"status","model":"m"}"#)?.message.contains("takes no arguments") == true)
        #expect(error(#"{"op":"filter","model":"m"}"#)?.code == .badRequest)
        #expect(error(#"{"op":"filter","model":"m","layer":"c"}"#)?.message.contains("go together") == true)
        #expect(error(#"{"op":"filter","model":"m","filter":1,"layer":"c","channel":1}"#)?.message.contains("not both") == true)
        #expect(error(#"{"op":"filter","model":"m","filter":-1}"#)?.code == .badRequest)
        #expect(error(#"{"op":"alerts","since":-1}"#)?.code == .badRequest)
        #expect(error(#"{"op":"alerts","active":1}"#)?.message.contains("true or false") == true)
        #expect(error(#"{"op":"alerts","since":[1]}"#)?.message.contains("array or object") == true)
        let nested = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(error(#"{"op":"status","x":"# + nested + "}")?.code == .badRequest)
        #expect(error(nested)?.code == .badRequest)
    }

    @Test func tooLarge() {
        let big = #"{"op":"status","pad":""# + String(repeating: "x", count: QueryRequest.maxBytes) + "\"}"
        #expect(error(big)?.code == .tooLarge)
    }

    @Test func randomBytesNeverCrash() {
        var rng = SplitMix64(seed: 0x5A11_E4C7)
        let alphabet = Array(#"{}[]":,0123456789.-+eE truefalsnop"\"#.utf8)
        for round in 0..<3000 {
            let n = Int.random(in: 0..<200, using: &rng)
            let bytes: [UInt8] = (0..<n).map { _ in
                round % 2 == 0 ? UInt8.random(in: 0...255, using: &rng) : alphabet.randomElement(using: &rng)!
            }
            do throws(SaliencyError) {
                _ = try QueryRequest.parse(bytes)
                Issue.record("random bytes parsed as a request: \(bytes)")
            } catch {
                #expect([.badRequest, .unknownOp, .tooLarge].contains(error.code))
            }
        }
        // Mutations of valid requests: any outcome but a crash.
        let seeds = [#"{"op":"top","model":"m","k":5,"by":"zscore","window":64}"#, #"{"op":"filter","model":"m","layer":"c","channel":1}"#]
        for round in 0..<3000 {
            var b = Array(seeds[round % 2].utf8)
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            _ = try? QueryRequest.parse(b)
        }
    }

    @Test func errorReply() throws {
        let bytes = QueryReply.error(code: .badRequest, message: "say \"op\"")
        let obj = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
        #expect(obj?["ok"] as? Bool == false)
        let e = obj?["error"] as? [String: Any]
        #expect(e?["code"] as? String == "bad_request")
        #expect(e?["message"] as? String == "say \"op\"")
        #expect(String(decoding: QueryReply.error(SaliencyError(.unknownOp, "x")), as: UTF8.self) == #"{"error":{"code":"unknown_op","message":"x"},"ok":false}"#)
    }
}
