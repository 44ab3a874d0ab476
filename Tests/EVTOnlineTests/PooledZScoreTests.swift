import Testing
import Foundation
import SaliencyCore
@testable import EVTOnline

/// The pooled z-score against the independent numpy reference Fixtures/gen_pooled_zscore_reference.py
/// (docs/statistics.md, "Pooled z-score").
@Suite struct PooledZScoreTests {
    struct Bank: Decodable {
        var reference: [[Float]]
        var new_rows: [[Float]]
        var z: [[Double]]
    }
    struct Reference: Decodable {
        var reference: [[Float]]
        var new_rows: [[Float]]
        var mean: [Double]
        var pooled_sd: Double
        var z: [[Double]]
        var constant: Bank
    }

    static func reference() throws -> Reference {
        let url = try #require(Bundle.module.url(forResource: "pooled_zscore_reference", withExtension: "json", subdirectory: "Fixtures"))
        return try JSONDecoder().decode(Reference.self, from: Data(contentsOf: url))
    }

    static func calibrated(_ rows: [[Float]]) throws -> FilterBank {
        let bank = try FilterBank(filterCount: rows[0].count, configuration: config(calibration: rows.count))
        for row in rows { #expect(feed(bank, row).rejected == nil) }
        #expect(bank.isCalibrated)
        return bank
    }

    static func scores(_ bank: FilterBank, _ row: [Float]) -> [Double] {
        var out = [Double](repeating: .nan, count: row.count)
        row.withUnsafeBufferPointer { r in out.withUnsafeMutableBufferPointer { bank.score(r, by: .pooledZscore, into: $0) } }
        return out
    }

    /// The pooled σ (an always-0 filter and a constant layer pooled with the rest), each filter's
    /// mean, and every z of the new rows equal numpy's to 1e-9 relative.
    @Test func equalsTheNumpyReference() throws {
        let ref = try Self.reference()
        let bank = try Self.calibrated(ref.reference)
        let sd = bank.pooledStandardDeviation()
        #expect(abs(sd - ref.pooled_sd) <= 1e-9 * ref.pooled_sd, "σ \(sd) vs numpy \(ref.pooled_sd)")
        for (j, m) in ref.mean.enumerated() { #expect(abs(bank.moments(j).mean - m) <= 1e-9 * max(1e-12, abs(m)) + 1e-15) }
        for (i, row) in ref.new_rows.enumerated() {
            let out = Self.scores(bank, row)
            for j in out.indices {
                #expect(abs(out[j] - ref.z[i][j]) <= 1e-9 * max(1, abs(ref.z[i][j])), "row \(i) filter \(j): \(out[j]) vs numpy \(ref.z[i][j])")
            }
        }
    }

    /// Every filter constant in calibration: σ = 0 is replaced by 1, so z = s − μ (finite, no NaN).
    @Test func aConstantBankDividesByOne() throws {
        let ref = try Self.reference().constant
        let bank = try Self.calibrated(ref.reference)
        #expect(bank.pooledStandardDeviation() == 1)
        for (i, row) in ref.new_rows.enumerated() {
            let out = Self.scores(bank, row)
            for j in out.indices { #expect(abs(out[j] - ref.z[i][j]) <= 1e-12, "row \(i) filter \(j): \(out[j]) vs \(ref.z[i][j])") }
        }
    }

    /// `top` by pooled-zscore ranks by that score (best first, ties by index), puts the planted
    /// value first, and carries no p.
    @Test func topRanksByThePooledScore() throws {
        let ref = try Self.reference()
        let bank = try Self.calibrated(ref.reference)
        let want = ref.z[0].enumerated().sorted { $0.element != $1.element ? $0.element > $1.element : $0.offset < $1.offset }.prefix(5).map(\.offset)
        let got = ref.new_rows[0].withUnsafeBufferPointer { bank.top($0, k: 5, by: .pooledZscore) }
        #expect(got.map(\.filter) == want)
        #expect(got.first?.filter == 20)   // the planted value
        for (g, j) in zip(got, want) { #expect(abs(g.score - ref.z[0][j]) <= 1e-9 * max(1, abs(ref.z[0][j]))) }
        #expect(got.allSatisfy { $0.p == nil })
    }

    @Test func scorerNamesAndMapping() {
        #expect(ScoreKind(rawValue: "pooled-zscore") == .pooledZscore)
        #expect(ScoreKind.pooledZscore.transform == .none)
        #expect(ScoreKind.pooledZscore.tailModel == .pooledZscore)
        #expect(ScoreKind(tail: .pooledZscore, transform: .none) == .pooledZscore)
        #expect(ScoreKind.names.contains("pooled-zscore"))
    }
}
