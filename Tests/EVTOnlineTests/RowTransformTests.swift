import Testing
import Foundation
import SaliencyCore
@testable import EVTOnline
import CKernels

/// The common-mode-free row transforms and the tail models on their output, against the
/// independent numpy/scipy reference Fixtures/gen_row_transform_reference.py (docs/statistics.md,
/// "Common-mode-free scorers").
@Suite struct RowTransformTests {
    struct Reference: Decodable {
        struct Filter: Decodable {
            var mean: Double
            var sd: Double
            var z: [Double]?
            var t: Double
            var nt: Int
            var shape: Double?
            var scale: Double?
            var loglik: Double?
            var score: [Double?]?
        }
        struct Transform: Decodable {
            var reference_y_first20: [[Double]]
            var new_y: [[Double]]
            var filters: [Filter]
        }
        var widths: [Int]
        var level: Double
        var reference: [[Double]]
        var new_rows: [[Double]]
        var new_row_notes: [String]
        var transforms: [String: Transform]
    }

    static func reference() throws -> Reference {
        let url = try #require(Bundle.module.url(forResource: "row_transform_reference", withExtension: "json", subdirectory: "Fixtures"))
        return try JSONDecoder().decode(Reference.self, from: Data(contentsOf: url))
    }

    static func offsets(_ widths: [Int]) -> [Int] { widths.reduce(into: [0]) { $0.append($0.last! + $1) } }

    static func apply(_ t: RowTransform, _ row: [Double]) -> [Float] {
        row.map { Float($0) }.withUnsafeBufferPointer { t.applied($0) }
    }

    static let kinds: [(String, RowTransformKind)] = [("layer-logres", .layerLogres), ("layer-ratio", .layerRatio)]

    /// Every reference and new row (zeros, a zero layer, an all-zero row, values near 1e37 and
    /// 1e-33, widths 1 and not multiples of 8) transforms to numpy's float64 result within 3e-6.
    @Test func transformEqualsTheNumpyReference() throws {
        let ref = try Self.reference()
        for (name, kind) in Self.kinds {
            let tr = RowTransform(kind: kind, offsets: Self.offsets(ref.widths))
            let want = try #require(ref.transforms[name])
            let cases = zip(ref.reference.prefix(20), want.reference_y_first20).map { ($0, $1, "reference row") }
                + zip(ref.new_rows, want.new_y).enumerated().map { ($1.0, $1.1, ref.new_row_notes[$0]) }
            for (row, y, note) in cases {
                let got = Self.apply(tr, row)
                for j in got.indices {
                    #expect(got[j].isFinite && got[j] >= 0, "\(name) \(note): filter \(j) = \(got[j])")
                    #expect(abs(Double(got[j]) - y[j]) <= 3e-6 * abs(y[j]), "\(name) \(note): filter \(j): \(got[j]) vs numpy \(y[j])")
                }
            }
        }
    }

    /// The point of the transform: a layer multiplied by any factor (the common mode) changes nothing.
    @Test func aLayerMultipliedByAFactorLeavesTheRowUnchanged() throws {
        let ref = try Self.reference()
        let off = Self.offsets(ref.widths)
        for (name, kind) in Self.kinds {
            let tr = RowTransform(kind: kind, offsets: off)
            for (i, row) in ref.reference.prefix(30).enumerated() {
                var scaled = row
                let l = i % ref.widths.count, c = [1e-4, 0.02, 3, 50, 1e5][i % 5]
                for j in off[l]..<off[l + 1] { scaled[j] *= c }
                let a = Self.apply(tr, row), b = Self.apply(tr, scaled)
                for j in a.indices { #expect(abs(a[j] - b[j]) <= 3e-6 * abs(a[j]), "\(name) row \(i), layer \(l) ×\(c): filter \(j) \(a[j]) vs \(b[j])") }
            }
        }
    }

    /// A bank fed the transformed reference rows fits the same tail models as scipy on numpy's
    /// transformed rows: thresholds, peak counts, GPD fits (likelihood at least scipy's), the POT
    /// scores of the new rows above threshold and their z-scores (asked with the transformed
    /// scorer names, which the bank maps to its tail model).
    @Test func tailModelsOnTransformedRowsEqualTheScipyReference() throws {
        let ref = try Self.reference()
        let off = Self.offsets(ref.widths)
        let k = off.last!
        for (name, kind) in Self.kinds {
            let tr = RowTransform(kind: kind, offsets: off)
            let want = try #require(ref.transforms[name])
            var cfg = config(calibration: ref.reference.count, level: ref.level, q: 1e-3)
            cfg.transform = kind
            let bank = try FilterBank(filterCount: k, configuration: cfg)
            for row in ref.reference { #expect(feed(bank, Self.apply(tr, row)).rejected == nil) }
            #expect(bank.isCalibrated)
            let newY = ref.new_rows.map { Self.apply(tr, $0) }
            var scores = [[Double]](), zs = [[Double]]()
            for y in newY {
                var sp = [Double](repeating: 0, count: k), sz = sp
                y.withUnsafeBufferPointer { row in
                    sp.withUnsafeMutableBufferPointer { bank.score(row, by: ScoreKind(tail: .pot, transform: kind), into: $0) }
                    sz.withUnsafeMutableBufferPointer { bank.score(row, by: ScoreKind(tail: .zscore, transform: kind), into: $0) }
                }
                scores.append(sp); zs.append(sz)
            }
            var checkedScores = 0
            for (j, f) in want.filters.enumerated() {
                let rep = bank.report(filter: j)
                if let z = f.z {
                    for (i, zr) in z.enumerated() { #expect(abs(zs[i][j] - zr) <= 1e-3 * max(1, abs(zr)), "\(name) filter \(j) row \(i): z \(zs[i][j]) vs \(zr)") }
                }
                guard let shape = f.shape, let scale = f.scale, let ll = f.loglik, let sc = f.score else { continue }
                #expect(abs(rep.threshold - f.t) <= 1e-5 * abs(f.t), "\(name) filter \(j): t \(rep.threshold) vs \(f.t)")
                #expect(abs(Int(rep.peaks) - f.nt) <= 1, "\(name) filter \(j): N_t \(rep.peaks) vs \(f.nt)")
                // The fit: the likelihood of scipy's peaks at Swift's fit is at least scipy's (peaks equal to float32 rounding).
                let col = ref.reference.map { Double(Self.apply(tr, $0)[j]) }.filter { $0 > rep.threshold }.map { $0 - rep.threshold }
                let swiftLL = col.withUnsafeBufferPointer { GPD(shape: rep.shape, scale: rep.scale).logLikelihood($0) }
                #expect(swiftLL >= ll - 1e-3 * abs(ll) - 1e-3, "\(name) filter \(j): ℓ \(swiftLL) < scipy \(ll)")
                guard shape > -0.8, rep.tail == .gpd else { continue }
                #expect(abs(rep.shape - shape) <= 0.02, "\(name) filter \(j): shape \(rep.shape) vs scipy \(shape)")
                #expect(abs(rep.scale - scale) <= 0.02 * scale, "\(name) filter \(j): scale \(rep.scale) vs scipy \(scale)")
                for (i, s) in sc.enumerated() {
                    guard let s, s.isFinite, Double(newY[i][j]) > rep.threshold else { continue }
                    #expect(abs(scores[i][j] - s) <= 0.05 * s + 0.05, "\(name) filter \(j) row \(i) (\(ref.new_row_notes[i])): score \(scores[i][j]) vs scipy \(s)")
                    checkedScores += 1
                }
            }
            #expect(checkedScores >= 10, "\(name): only \(checkedScores) POT scores above threshold were compared")
        }
    }

    /// The vector log of the log-residual kernel: |error| < 4e-6 absolute over every normal float
    /// magnitude (FLT_MIN … 3e38), i.e. < 2e-7 relative on the logs a layer sums.
    @Test func vectorLogIsAccurate() {
        var worst = 0.0
        var v = Float.leastNormalMagnitude
        var x = [Float](repeating: 0, count: 8), y = x
        while v < 3e38 {
            for l in 0..<8 { x[l] = v * (1 + Float(l) * 0.001) }
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { saliency_log8(xp.baseAddress, $0.baseAddress) } }
            for l in 0..<8 { worst = max(worst, abs(Double(y[l]) - log(Double(x[l])))) }
            v *= 1.0173
        }
        #expect(worst < 4e-6, "worst absolute error \(worst)")
        #expect(["avx2", "sse2", "generic"].contains(RowTransform.isa))
    }

    /// Scorer names: each transformed scorer maps to its transform and tail model and back.
    @Test func scorerNamesMapToTransformAndTail() {
        for kind in ScoreKind.allCases {
            #expect(ScoreKind(tail: kind.tailModel, transform: kind.transform) == kind)
            #expect(ScoreKind(rawValue: kind.rawValue) == kind)
        }
        #expect(ScoreKind.logresPot.transform == .layerLogres && ScoreKind.logresPot.tailModel == .pot)
        #expect(ScoreKind.ratioZscore.transform == .layerRatio && ScoreKind.ratioZscore.tailModel == .zscore)
        #expect(ScoreKind.names == "pot, zscore, logres-pot, logres-zscore, ratio-pot, ratio-zscore, pooled-zscore")
    }

    /// The snapshot records the transform: a bank restored under another pot.transform is refused
    /// with a message naming both; an untransformed state keeps its bytes.
    @Test func snapshotRecordsTheTransform() throws {
        var cfg = config(calibration: 20, level: 0.5, q: 1e-2)
        cfg.transform = .layerLogres
        let bank = try FilterBank(filterCount: 4, configuration: cfg)
        for i in 0..<25 { _ = feed(bank, [1, 2, 3, Float(i % 7) + 0.5]) }
        let bytes = bank.serializedState()
        let back = try FilterBank(restoring: bytes, configuration: cfg)
        #expect(back.configuration.transform == .layerLogres && back.serializedState() == bytes)
        var plain = cfg
        plain.transform = .none
        do {
            _ = try FilterBank(restoring: bytes, configuration: plain)
            Issue.record("a layer-logres state was restored under transform = none")
        } catch {
            #expect(error.message.contains("layer-logres") && error.message.contains("\"none\""), "\(error.message)")
        }
        #expect(try FilterBank(restoring: bytes, configuration: nil).configuration.transform == .layerLogres)
    }
}
