import Testing
import Foundation
import SaliencyCore
@testable import EVTOnline

/// The calibration end gathers each filter's column from the row-major buffer in blocks of
/// filters and radix-sorts it (`FilterBank.calibrateColumns`, FilterBank+Calibration.swift). Every
/// block size, with either sort, must give exactly the bank the legacy calibration end (one column
/// at a time, the standard library's sort: the code before 2026-12) gives: the same snapshot
/// bytes, the same monitoring afterwards, and the same cross-fit histogram.
@Suite struct CalibrationGatherTests {
    /// `n × k` positive values with ties and exact zeros (lower-tail zero modes), a heavy tail on
    /// some filters, and, for `layer-logres`, the transformed rows a daemon would feed.
    /// `negativeZeros`: every other exact zero is −0.0 (the radix sort orders −0.0 before +0.0,
    /// the comparison sort keeps them in arrival order).
    static func rows(n: Int, k: Int, seed: UInt64, transform: RowTransformKind = .none, negativeZeros: Bool = false) -> [Float] {
        var rng = SplitMix64(seed: seed)
        var v = [Float](repeating: 0, count: n * k)
        for r in 0..<n {
            for j in 0..<k {
                let u = rng.unit()
                switch j % 5 {
                case 0: v[r * k + j] = Float(-Foundation.log(u))                              // exponential
                case 1: v[r * k + j] = u < 0.3 ? (negativeZeros && (r + j) % 2 == 0 ? -0.0 : 0) : Float(-Foundation.log(u))   // zero atom
                case 2: v[r * k + j] = Float((Foundation.pow(u, -0.25) - 1) / 0.25)           // GPD, ξ = 0.25
                case 3: v[r * k + j] = Float((u * 8).rounded(.down))                          // ties
                default: v[r * k + j] = Float(Foundation.exp(0.8 * (u - 0.5) * 6))            // lognormal-ish
                }
            }
        }
        guard transform != .none else { return v }
        // Layers of 3, 5, … filters (the last takes the rest).
        var offsets = [0]
        var w = 3
        while offsets.last! + w < k { offsets.append(offsets.last! + w); w += 2 }
        offsets.append(k)
        let tr = RowTransform(kind: transform, offsets: offsets)
        var out = [Float](repeating: 0, count: n * k)
        for r in 0..<n {
            v.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { dst in
                    tr.apply(UnsafeBufferPointer(rebasing: src[(r * k)..<((r + 1) * k)]),
                             into: UnsafeMutableBufferPointer(rebasing: dst[(r * k)..<((r + 1) * k)]))
                }
            }
        }
        return out
    }

    /// How a test bank's calibration ends.
    enum End: CustomStringConvertible {
        /// `finishCalibration(legacy: true)`: the reference.
        case legacy
        /// `finishCalibration()`: what the daemon runs.
        case production
        /// `calibrateColumns` with this block size and sort.
        case blocked(Int, radix: Bool)
        var description: String {
            switch self {
            case .legacy: "legacy"
            case .production: "production"
            case .blocked(let b, let radix): "block \(b) \(radix ? "radix" : "comparison") sort"
            }
        }
    }

    /// A bank calibrated on `values` (`calibration × k`, row-major), its calibration ended by `end`.
    static func calibrated(_ values: [Float], k: Int, pot: POTConfiguration, _ end: End) throws -> FilterBank {
        let bank = try FilterBank(filterCount: k, configuration: pot)
        bank.rows = UInt64(pot.calibration)   // as if the rows had arrived through `update`
        bank.calibSeen = pot.calibration - 1
        values.withUnsafeBufferPointer { v in
            switch end {
            case .legacy: bank.finishCalibration(from: v.baseAddress!, legacy: true)
            case .production: bank.finishCalibration(from: v.baseAddress!)
            case .blocked(let b, let radix):
                // finishCalibration's steps, with a chosen block and sort.
                bank.calibrateColumns(v.baseAddress!, block: b, radix: radix)
                bank.storage.releaseCalibration()
                bank.calibSeen = pot.calibration
            }
        }
        bank.checkInvariantsIfEnabled()
        #expect(bank.isCalibrated)
        return bank
    }

    /// Whether two snapshots are byte-equal, and where they first differ (a failing `==` on the
    /// arrays themselves would print megabytes).
    static func same(_ a: [UInt8], _ b: [UInt8]) -> (Bool, String) {
        guard a != b else { return (true, "") }
        let i = a.indices.first { $0 >= b.count || a[$0] != b[$0] } ?? a.count
        return (false, "snapshots differ from byte \(i) of \(a.count) / \(b.count)")
    }

    struct Shape: CustomStringConvertible, Sendable {
        let k: Int, n: Int, tails: TailSelection, transform: RowTransformKind, drift: Int
        var description: String { "K=\(k) n=\(n) tails=\(tails) transform=\(transform.rawValue) drift=\(drift)" }
        var pot: POTConfiguration {
            var p = POTConfiguration(level: 0.8, q: 1e-3, calibration: n, maxPeaks: 16, minPeaks: 5, refitAfterPeaks: 4, driftWindow: drift)
            p.tails = tails
            p.transform = transform
            return p
        }
    }

    static let shapes: [Shape] = [
        Shape(k: 1, n: 30, tails: .upper, transform: .none, drift: 0),
        Shape(k: 3, n: 30, tails: .both, transform: .none, drift: 0),
        Shape(k: 67, n: 40, tails: .both, transform: .none, drift: 0),       // 64 + 3
        Shape(k: 130, n: 31, tails: .lower, transform: .none, drift: 0),     // 2 · 64 + 2, odd n
        Shape(k: 129, n: 53, tails: .both, transform: .layerLogres, drift: 0),
        Shape(k: 97, n: 45, tails: .upper, transform: .layerLogres, drift: 0),
        Shape(k: 70, n: 60, tails: .upper, transform: .none, drift: 8),      // DSPOT seeding
    ]

    /// Snapshot bytes (every learned column, the rings, fits, sketches, zero modes, drift windows)
    /// are equal for the legacy end and blocks of 1, 2, 7, 64, 1,000 and the default, with either
    /// sort, with or without −0.0 among the zeros.
    @Test(arguments: shapes) func everyBlockSizeGivesTheSameBank(shape: Shape) throws {
        let values = Self.rows(n: shape.n, k: shape.k, seed: UInt64(shape.k * 1_000 + shape.n), transform: shape.transform)
        let reference = try Self.calibrated(values, k: shape.k, pot: shape.pot, .legacy)
        let bytes = reference.serializedState()
        #expect(FilterBank.calibrationGatherBlock(filterCount: shape.k, rows: shape.n) == min(64, shape.k))
        var ends: [End] = [.production]
        for b in [1, 2, 7, 64, 1_000] { ends += [.blocked(b, radix: true), .blocked(b, radix: false)] }
        for end in ends {
            let bank = try Self.calibrated(values, k: shape.k, pot: shape.pot, end)
            do { let (ok, why) = Self.same(bank.serializedState(), bytes); #expect(ok, "\(shape), \(end): \(why)") }
        }
        if shape.transform == .none && shape.k >= 2 {
            let signed = Self.rows(n: shape.n, k: shape.k, seed: 3, negativeZeros: true)
            #expect(signed.contains { $0 == 0 && $0.sign == .minus })
            let bytes = try Self.calibrated(signed, k: shape.k, pot: shape.pot, .legacy).serializedState()
            for end in [End.production, .blocked(5, radix: true)] {
                do { let (ok, why) = Self.same(try Self.calibrated(signed, k: shape.k, pot: shape.pot, end).serializedState(), bytes); #expect(ok, "\(shape), −0.0, \(end): \(why)") }
            }
        }
        // The bank fed row by row (its own buffer, default block) is the same bank, and monitors alike.
        let fed = try FilterBank(filterCount: shape.k, configuration: shape.pot)
        values.withUnsafeBufferPointer { v in
            for r in 0..<shape.n { _ = fed.update(UnsafeBufferPointer(rebasing: v[(r * shape.k)..<((r + 1) * shape.k)])) }
        }
        #expect(fed.isCalibrated)
        do { let (ok, why) = Self.same(fed.serializedState(), bytes); #expect(ok, "\(shape), fed row by row: \(why)") }
        let more = Self.rows(n: 200, k: shape.k, seed: 99, transform: shape.transform)
        more.withUnsafeBufferPointer { v in
            for r in 0..<200 {
                let row = UnsafeBufferPointer(rebasing: v[(r * shape.k)..<((r + 1) * shape.k)])
                _ = fed.update(row); _ = reference.update(row)
            }
        }
        #expect(fed.refitCount > 0 || shape.k < 3)
        do { let (ok, why) = Self.same(fed.serializedState(), reference.serializedState()); #expect(ok, "\(shape), after 200 monitored rows: \(why)") }
    }

    /// The cross-fit's fold calibrations gather the same way: same histogram for every block size,
    /// and the bank's own cross-fit (requested, run at calibration end) gives it too.
    @Test(arguments: [shapes[2], shapes[4], shapes[5]]) func crossFitHistogramIsUnchanged(shape: Shape) throws {
        var pot = shape.pot
        pot.calibration = 2 * shape.n   // halves of n rows
        let values = Self.rows(n: pot.calibration, k: shape.k, seed: 7, transform: shape.transform)
        let reference = try values.withUnsafeBufferPointer {
            try FilterBank.crossFitHistogram(rows: $0, filterCount: shape.k, configuration: pot, bins: 257, legacy: true)
        }
        #expect(reference.reduce(0, +) == UInt64(pot.calibration))
        #expect(reference[0] < UInt64(pot.calibration), "some row has an extreme")
        let h = try values.withUnsafeBufferPointer {
            try FilterBank.crossFitHistogram(rows: $0, filterCount: shape.k, configuration: pot, bins: 257)
        }
        #expect(h == reference, "\(shape)")
        let bank = try FilterBank(filterCount: shape.k, configuration: pot)
        bank.requestCrossFit(bins: 257)
        values.withUnsafeBufferPointer { v in
            for r in 0..<pot.calibration { _ = bank.update(UnsafeBufferPointer(rebasing: v[(r * shape.k)..<((r + 1) * shape.k)])) }
        }
        guard case .success(let own)? = bank.takeCrossFit() else { Issue.record("no cross-fit result"); return }
        #expect(own == reference)
    }

    /// The radix sort sorts: ascending, the same multiset, NaN refused (the caller falls back).
    @Test func radixSortSorts() {
        var rng = SplitMix64(seed: 11)
        for n in [0, 1, 2, 3, 17, 256, 1_000, 4_097] {
            var v = (0..<n).map { i -> Float in
                switch i % 6 {
                case 0: Float(rng.unit() * 10)
                case 1: -Float(rng.unit() * 1e-30)
                case 2: i % 12 == 2 ? -0.0 : 0
                case 3: Float(i % 7)
                case 4: .leastNonzeroMagnitude * Float(i % 3) - (i % 5 == 0 ? 3e38 : 0)
                default: Float(-Foundation.log(rng.unit()) * 1e30)
                }
            }
            let expected = v.sorted()
            let scratch = UnsafeMutablePointer<UInt32>.allocate(capacity: n + FilterBank.radixCounters)
            defer { scratch.deallocate() }
            #expect(v.withUnsafeMutableBufferPointer { FilterBank.radixSort($0.baseAddress ?? UnsafeMutablePointer(bitPattern: 8)!, count: n, scratch: scratch) })
            #expect(v == expected, "n=\(n)")   // == : −0.0 and +0.0 may be swapped
            #expect(zip(v, v.dropFirst()).allSatisfy { $0.0 < $0.1 || ($0.0.bitPattern == $0.1.bitPattern) || ($0.0 == 0 && $0.1 == 0 && $0.0.sign == .minus) })
        }
        var nan: [Float] = [3, .nan, 1]
        let scratch = UnsafeMutablePointer<UInt32>.allocate(capacity: 3 + FilterBank.radixCounters)
        defer { scratch.deallocate() }
        #expect(!nan.withUnsafeMutableBufferPointer { FilterBank.radixSort($0.baseAddress!, count: 3, scratch: scratch) })
        #expect(nan[0] == 3 && nan[1].isNaN && nan[2] == 1)
    }

    /// The calibration end's scratch is bounded (≤ 1 MiB + 16 bytes per row + 4 KiB, whatever K and n) and counted in
    /// the admission budget and the cross-fit's transient bytes.
    @Test func scratchIsBoundedAndCounted() throws {
        for (k, n) in [(1, 10), (26_560, 1_000), (26_560, 4_000), (26_560, 100_000), (5, 1_000_000), (1 << 24, 1_000_000)] {
            let block = FilterBank.calibrationGatherBlock(filterCount: k, rows: n)
            #expect(block >= 1 && block <= min(64, k))
            let scratch = try #require(FilterBank.calibrationScratchBytes(filterCount: k, rows: n))
            #expect(scratch <= (1 << 20) + 16 * n + 4_096, "K=\(k) n=\(n): \(scratch) bytes")
            #expect(scratch == (block + 3) * 4 * n + 4 * FilterBank.radixCounters)
        }
        #expect(FilterBank.calibrationGatherBlock(filterCount: 26_560, rows: 4_000) == 64)
        #expect(FilterBank.calibrationGatherBlock(filterCount: 26_560, rows: 100_000) == 2)
        // maximumBytes grew by exactly the scratch (columns + calibration buffer + fitter + 4 KiB before).
        let pot = POTConfiguration(calibration: 4_000)
        let k = 26_560
        let scratch = FilterBank.calibrationScratchBytes(filterCount: k, rows: 4_000)!
        let withoutScratch = k * (FilterBank.bytesPerFilter(pot) + 4 * 4_000)
        let maximum = try #require(FilterBank.maximumBytes(filterCount: k, configuration: pot))
        #expect(maximum - withoutScratch >= scratch && maximum - withoutScratch < scratch + (1 << 20))
        let transient = try #require(FilterBank.crossFitTransientBytes(filterCount: k, configuration: pot))
        #expect(transient >= k * FilterBank.bytesPerFilter(pot) + FilterBank.calibrationScratchBytes(filterCount: k, rows: 2_000)!)
    }
}

/// Cost of the calibration end at ResNet-50 width, the legacy end (per-filter gather, comparison
/// sort: before 2026-12) against the blocked gather with the radix sort, interleaved in one process. Opt-in: SALIENCY_XFIT_BENCH=1
/// (release build; BENCHMARKS.md "Calibration end"). SALIENCY_XFIT_BENCH_ROUNDS: rounds (2),
/// SALIENCY_XFIT_BENCH_ONLY=old|new: time one variant only (for perf).
@Suite(.serialized) struct CalibrationGatherBenchmark {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["SALIENCY_XFIT_BENCH"] != nil),
          arguments: [1_000, 4_000]) func benchmarkCalibrationEnd(calibration: Int) throws {
        let env = ProcessInfo.processInfo.environment
        let rounds = Int(env["SALIENCY_XFIT_BENCH_ROUNDS"] ?? "") ?? 2
        let only = env["SALIENCY_XFIT_BENCH_ONLY"]
        let k = 26_560
        var rng = SplitMix64(seed: 5)
        var values = [Float](repeating: 0, count: calibration * k)
        values.withUnsafeMutableBufferPointer { b in
            for i in 0..<calibration { ModelShiftCrossFitTests.Null.sharedFactor.fill(UnsafeMutableBufferPointer(rebasing: b[(i * k)..<((i + 1) * k)]), &rng) }
        }
        let clock = ContinuousClock()
        func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18 }
        for tails in [TailSelection.upper, .both] {
            var pot = POTConfiguration(q: 1e-4, calibration: calibration)
            pot.tails = tails
            for round in 0..<rounds {
                for (name, legacy) in [("old", true), ("new", false)] where only == nil || only == name {
                    let bank = try FilterBank(filterCount: k, configuration: pot)
                    bank.rows = UInt64(calibration)
                    bank.calibSeen = calibration - 1
                    let tc = clock.measure { values.withUnsafeBufferPointer { bank.finishCalibration(from: $0.baseAddress!, legacy: legacy) } }
                    var h: [UInt64] = []
                    let tx = try clock.measure {
                        h = try values.withUnsafeBufferPointer { try FilterBank.crossFitHistogram(rows: $0, filterCount: k, configuration: pot, bins: 257, legacy: legacy) }
                    }
                    let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
                    print(String(format: "BENCH calibration-end K=%d n=%d tails=%@ round=%d gather=%@: calibration %.2f s, cross-fit %.2f s, total %.2f s (load %@; rows with an extreme %d)",
                                 k, calibration, "\(tails)", round, name, seconds(tc), seconds(tx), seconds(tc + tx), load, calibration - Int(h[0])))
                }
            }
        }
    }
}
