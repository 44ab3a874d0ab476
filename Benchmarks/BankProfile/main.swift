// BankProfile: a plain (non-async) driver for FilterBank, for profiling where `update` spends
// its time (perf has no hardware counters on this VM; valgrind dies on async binaries).
//
//   BankProfile profile [K ...]            breakdown table (default K = 26560 4800; levels 0.90, 0.98):
//                                           the shipped FilterBank with its levers switched one at a time
//   BankProfile shard [K]                  1 bank of K vs 2 threads × K/2 (aggregate rows/s, wall)
//   BankProfile npy FILE.npy CAL LEVEL      calibrate on the first CAL rows of a [rows, K] float32
//                                           .npy, then time `update` on the rest; prints JSON
//
// Times are per row, best of 3 interleaved rounds, as thread CPU time (robust on a loaded
// machine) and wall time. Built in release by the Benchmarks package.
import BenchSupport
import EVTOnline
import Foundation
import SaliencyCore

struct Timing { var cpu = Double.infinity; var wall = Double.infinity }   // ns per row

@inline(never)
func timeRows(_ n: Int, _ body: (Int) -> Int) -> (Timing, Int) {
    var acc = 0
    let c0 = threadCPUNanoseconds(), w0 = nowNanoseconds()
    for i in 0..<n { acc &+= body(i) }
    let c1 = threadCPUNanoseconds(), w1 = nowNanoseconds()
    return (Timing(cpu: Double(c1 - c0) / Double(n), wall: Double(w1 - w0) / Double(n)), acc)
}

func fmt(_ x: Double, _ d: Int = 1) -> String { String(format: "%.\(d)f", x) }

func makeBank(_ pool: RowPool, level: Double, refitsPerRow: Double, maxPeaks: Int = 256, peakStride: Int = 0,
              kernels: FilterBank.Kernels = .best) -> FilterBank {
    var cfg = POTConfiguration()
    cfg.level = level
    cfg.maxPeaks = maxPeaks
    cfg.refitsPerRow = refitsPerRow
    cfg.peakStride = peakStride
    let bank = try! FilterBank(filterCount: pool.filters, configuration: cfg, kernels: kernels)
    for i in 0..<(cfg.calibration + 2_000) { bank.updateValidated(pool.row(i)) }   // steady state
    return bank
}

func profile(k: Int, level: Double, rowsPerRound: Int, rounds: Int = 4) {
    let pool = RowPool(filters: k, poolRows: 64, seed: 1)
    let stride = makeBank(pool, level: level, refitsPerRow: 0.25).peakStride
    // (name, bank); each bank runs the kernel variant it was made with
    let banks: [(String, FilterBank)] = [
        ("update, defaults (0.25 refits/row, stride \(stride), best kernels)", makeBank(pool, level: level, refitsPerRow: 0.25)),
        ("update, defaults, baseline (SSE2) kernels", makeBank(pool, level: level, refitsPerRow: 0.25, kernels: .baseline)),
        ("update, no refits (refits_per_row 0, stride \(stride))", makeBank(pool, level: level, refitsPerRow: 0, peakStride: stride)),
        ("update, no refits, stride 1 (every peak to the ring)", makeBank(pool, level: level, refitsPerRow: 0, peakStride: 1)),
    ]
    var results = [String: Timing]()
    var peaksPerRow = [String: Double]()
    var refitsPerRow = [String: Double]()
    func record(_ name: String, _ t: Timing) {
        var r = results[name, default: Timing()]
        r.cpu = min(r.cpu, t.cpu); r.wall = min(r.wall, t.wall); results[name] = r
    }
    var order: [String] = []
    for round in 0..<rounds {
        let next = 5_000 + round * rowsPerRound
        let (tv, _) = timeRows(rowsPerRound) { i in banks[0].1.validate(pool.row(next + i)) == nil ? 0 : 1 }
        record("validate (read + check the row)", tv)
        if round == 0 { order.append("validate (read + check the row)") }
        for (name, bank) in banks {
            let r0 = bank.refitCount
            let (t, peaks) = timeRows(rowsPerRound) { i in bank.update(pool.row(next + i)).peaks }
            record(name, t)
            peaksPerRow[name] = Double(peaks) / Double(rowsPerRound)
            refitsPerRow[name] = Double(bank.refitCount - r0) / Double(rowsPerRound)
            if round == 0 { order.append(name) }
        }
    }
    // Cost of one refit: the shipped fitter on 256-peak sets gathered (untimed) from calibration rows.
    let cal = RowPool(filters: min(k, 64), poolRows: 1000, seed: 1)
    let sets = min(k, 64)
    var peakSets = [Float](repeating: 0, count: sets * 256)
    for j in 0..<sets {
        var col = (0..<1000).map { Double(cal.row($0)[j]) }
        let sorted = col.sorted()
        let pos = level * 999, lo = Int(pos)
        let tj = sorted[lo] + (pos - Double(lo)) * (sorted[lo + 1] - sorted[lo])
        col = col.filter { $0 > tj }.map { $0 - tj }
        for n in 0..<256 { peakSets[j * 256 + n] = Float(col[n % col.count] * (1 + 1e-3 * Double(n / col.count))) }
    }
    var fitter = GrimshawFitter(capacity: 256)
    let fits = 400
    var tFit = Double.infinity
    var sink = 0.0
    peakSets.withUnsafeBufferPointer { all in
        func set(_ f: Int) -> UnsafeBufferPointer<Float> { UnsafeBufferPointer(rebasing: all[((f % sets) * 256)..<((f % sets + 1) * 256)]) }
        for _ in 0..<3 {
            let c0 = threadCPUNanoseconds()
            for f in 0..<fits { sink += fitter.fit(set(f), minPeaks: 10).gpd.scale }
            tFit = min(tFit, Double(threadCPUNanoseconds() - c0) / Double(fits))
        }
    }
    if sink.isNaN { print("nan") }
    print("\n### K = \(k), level = \(level)   (bytes/filter = \(banks[0].1.bytesPerFilter); ring = \(k * 256 * 4 / 1_048_576) MiB; kernels \(FilterBank.kernelISA))")
    print("| path | ns/row CPU | ns/row wall | rows/s (CPU) | peaks/row | refits/row |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in order {
        let r = results[name]!
        print("| \(name) | \(fmt(r.cpu, 0)) | \(fmt(r.wall, 0)) | \(fmt(1e9 / r.cpu, 0)) | \(peaksPerRow[name].map { fmt($0, 1) } ?? "") | \(refitsPerRow[name].map { fmt($0, 3) } ?? "") |")
    }
    print("")
    print("- one refit (GrimshawFitter, 256 peaks): \(fmt(tFit / 1000, 1)) µs CPU; at 0.25 refits/row that is \(fmt(0.25 * tFit / 1000, 1)) µs per row")
}

func npyMode(path: String, calibration: Int, level: Double) throws {
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    let arr = try NPYArray.parse([UInt8](data))
    let k = arr.columns, rows = arr.rows
    precondition(rows > calibration, "need more rows than calibration")
    let pool = RowPool(filters: k, values: arr.values)
    var cfg = POTConfiguration()
    cfg.level = level
    cfg.calibration = calibration
    let bank = try FilterBank(filterCount: k, configuration: cfg)
    for r in 0..<calibration { bank.update(pool.row(r)) }
    var extremes = 0, peaks = 0
    let w0 = nowNanoseconds(), c0 = threadCPUNanoseconds()
    for r in calibration..<rows {
        let res = bank.update(pool.row(r))
        extremes += res.extremes; peaks += res.peaks
    }
    let wall = Double(nowNanoseconds() - w0) * 1e-9, cpu = Double(threadCPUNanoseconds() - c0) * 1e-9
    let n = rows - calibration
    print("{\"filters\": \(k), \"rows\": \(n), \"level\": \(level), \"seconds_wall\": \(wall), \"seconds_cpu\": \(cpu), \"rows_per_second_wall\": \(Double(n) / wall), \"rows_per_second_cpu\": \(Double(n) / cpu), \"extremes\": \(extremes), \"peaks\": \(peaks), \"refits\": \(bank.refitCount)}")
}

/// Splits K filters over `shards` threads, one FilterBank of K/shards columns each (per-filter state is
/// independent), and compares the aggregate rows/s with one bank of K filters, in the same run.
final class ShardJob: @unchecked Sendable {
    // Isolation: each job is touched only by its own thread between start and join.
    let bank: FilterBank, pool: RowPool, rows: Int
    var peaks = 0
    init(filters: Int, level: Double, rows: Int, seed: UInt64) {
        pool = RowPool(filters: filters, poolRows: 64, seed: seed)
        bank = makeBank(pool, level: level, refitsPerRow: 0.25)
        self.rows = rows
    }
    func run() { for i in 0..<rows { peaks &+= bank.update(pool.row(i)).peaks } }
}

func shard(k: Int, level: Double, rows: Int) {
    for shards in [1, 2, 1, 2] {
        let jobs = (0..<shards).map { ShardJob(filters: k / shards, level: level, rows: rows, seed: UInt64(1 + $0)) }
        let w0 = nowNanoseconds()
        let done = DispatchGroup()
        let ts = jobs.map { job in Thread { job.run(); done.leave() } }
        for t in ts { done.enter(); t.start() }
        done.wait()
        let secs = Double(nowNanoseconds() - w0) * 1e-9
        print("K=\(k) level=\(level): \(shards) thread(s) × \(k / shards) filters: \(rows) rows in \(String(format: "%.3f", secs)) s wall → \(Int(Double(rows) / secs)) rows/s (load:\(loadavg()))")
    }
}

func loadavg() -> String { (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?" }

let args = CommandLine.arguments
if args.count >= 2 && args[1] == "npy" && args.count == 5 {
    try npyMode(path: args[2], calibration: Int(args[3])!, level: Double(args[4])!)
} else if args.count >= 2 && args[1] == "profile" {
    let ks = args.count > 2 ? args[2...].map { Int($0)! } : [26_560, 4_800]
    for k in ks {
        for level in [0.90, 0.98] { profile(k: k, level: level, rowsPerRound: k > 10_000 ? 1_000 : 5_000, rounds: 5) }
    }
} else if args.count >= 2 && args[1] == "shard" {
    let k = args.count > 2 ? Int(args[2])! : 26_560
    for level in [0.90, 0.98] { shard(k: k, level: level, rows: 10_000) }
} else {
    print("usage: BankProfile profile [K ...] | BankProfile npy FILE.npy CALIBRATION LEVEL")
}
