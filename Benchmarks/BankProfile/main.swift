// BankProfile: a plain (non-async) driver for FilterBank, for profiling where `update` spends
// its time (perf has no hardware counters on this VM; valgrind dies on async binaries).
//
//   BankProfile profile [K ...]            breakdown table (default K = 26560 4800; levels 0.90, 0.98);
//                                           env PROFILE_VARIANTS=current,compact limits the prototypes
//   BankProfile shard [K]                  1 bank of K vs 2 threads × K/2 (aggregate rows/s, wall)
//   BankProfile check                      prototype variants must leave identical state
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

func makeBank(_ pool: RowPool, level: Double, refitsPerRow: Double, maxPeaks: Int = 256) -> FilterBank {
    var cfg = POTConfiguration()
    cfg.level = level
    cfg.maxPeaks = maxPeaks
    cfg.refitsPerRow = refitsPerRow
    let bank = try! FilterBank(filterCount: pool.filters, configuration: cfg)
    for i in 0..<(cfg.calibration + 2_000) { bank.updateValidated(pool.row(i)) }   // steady state
    return bank
}

func profile(k: Int, level: Double, rowsPerRound: Int, rounds: Int = 4) {
    let pool = RowPool(filters: k, poolRows: 64, seed: 1)
    let cal = RowPool(filters: k, poolRows: 1000, seed: 1)   // same first 64 rows as `pool`
    let banks: [(String, FilterBank)] = [
        ("FilterBank.update, default budget 0.25 refits/row (stub fitter)", makeBank(pool, level: level, refitsPerRow: 0.25)),
        ("FilterBank.update, refitsPerRow = 0 (no refits)", makeBank(pool, level: level, refitsPerRow: 0)),
        ("FilterBank.update, no refits, maxPeaks = 128", makeBank(pool, level: level, refitsPerRow: 0, maxPeaks: 128)),
        ("FilterBank.update, no refits, maxPeaks = 64", makeBank(pool, level: level, refitsPerRow: 0, maxPeaks: 64)),
    ]
    // PROFILE_VARIANTS=current,compact limits the prototype variants (default: all).
    let only = ProcessInfo.processInfo.environment["PROFILE_VARIANTS"].map { Set($0.split(separator: ",").map(String.init)) }
    let protos = Variant.allCases.filter { only?.contains($0.rawValue) ?? true }.map { ($0, ProtoBank(pool: cal, level: level)) }
    var results = [String: Timing]()
    var peaksPerRow = [String: Double]()
    func record(_ name: String, _ t: Timing) {
        var r = results[name, default: Timing()]
        r.cpu = min(r.cpu, t.cpu); r.wall = min(r.wall, t.wall); results[name] = r
    }
    var order: [String] = []
    for round in 0..<rounds {
        var next = 5_000 + round * rowsPerRound
        let (tv, _) = timeRows(rowsPerRound) { i in banks[0].1.validate(pool.row(next + i)) == nil ? 0 : 1 }
        record("validate (read + check the row)", tv)
        if round == 0 { order.append("validate (read + check the row)") }
        for (name, bank) in banks {
            let r0 = bank.refitCount
            let (t, peaks) = timeRows(rowsPerRound) { i in bank.update(pool.row(next + i)).peaks }
            record(name, t)
            peaksPerRow[name] = Double(peaks) / Double(rowsPerRound)
            if round == 0 { order.append(name); peaksPerRow[name + "#refits"] = Double(bank.refitCount - r0) / Double(rowsPerRound) }
        }
        for (v, p) in protos {
            var credit = 0.0
            let (t, peaks) = timeRows(rowsPerRound) { i in
                let n = p.scan(pool.row(next + i).baseAddress!, v)
                credit += 0.25; if credit >= 1 { credit -= 1; p.popDue() }
                return n
            }
            let name = "proto scan: \(v.rawValue)"
            record(name, t)
            peaksPerRow[name] = Double(peaks) / Double(rowsPerRound)
            if round == 0 { order.append(name) }
        }
        next += rowsPerRound
    }
    // Fit costs on 256-peak sets gathered (untimed) from the calibration rows of 64 filters.
    let sets = 64
    var peakSets = [Float](repeating: 0, count: sets * 256)
    for j in 0..<sets {
        var col = (0..<1000).map { Double(cal.row($0)[j]) }
        let sorted = col.sorted()
        let pos = level * 999, lo = Int(pos)
        let tj = sorted[lo] + (pos - Double(lo)) * (sorted[lo + 1] - sorted[lo])
        col = col.filter { $0 > tj }.map { $0 - tj }
        for n in 0..<256 { peakSets[j * 256 + n] = Float(col[n % col.count] * (1 + 1e-3 * Double(n / col.count))) }
    }
    var stub = GrimshawFitter(capacity: 256)
    var ref = RefGrimshaw()
    let fits = 400
    var tStub = Double.infinity, tRef = Double.infinity, tEval = Double.infinity
    var sink = 0.0
    peakSets.withUnsafeBufferPointer { all in
        func set(_ f: Int) -> UnsafeBufferPointer<Float> { UnsafeBufferPointer(rebasing: all[((f % sets) * 256)..<((f % sets + 1) * 256)]) }
        for _ in 0..<3 {
            var c0 = threadCPUNanoseconds()
            for f in 0..<fits { sink += stub.fit(set(f), minPeaks: 10).gpd.scale }
            tStub = min(tStub, Double(threadCPUNanoseconds() - c0) / Double(fits))
            ref.evaluations = 0
            c0 = threadCPUNanoseconds()
            for f in 0..<fits { sink += ref.fit(set(f)).1 }
            tRef = min(tRef, Double(threadCPUNanoseconds() - c0) / Double(fits))
            c0 = threadCPUNanoseconds()
            for f in 0..<fits { sink += ref.w(set(f), 0.1) }
            tEval = min(tEval, Double(threadCPUNanoseconds() - c0) / Double(fits))
        }
    }
    if sink.isNaN { print("nan") }
    let evalsPerFit = Double(ref.evaluations - fits) / Double(fits)
    // Stub cost measured with its own copy loop; subtract nothing (upper bound).
    let bpf = banks[0].1.bytesPerFilter
    print("\n### K = \(k), level = \(level)   (bytes/filter = \(bpf); ring = \(k * 256 * 4 / 1_048_576) MiB)")
    print("| path | ns/row CPU | ns/row wall | rows/s (CPU) | peaks/row |")
    print("|---|---:|---:|---:|---:|")
    for name in order {
        let r = results[name]!
        print("| \(name) | \(fmt(r.cpu, 0)) | \(fmt(r.wall, 0)) | \(fmt(1e9 / r.cpu, 0)) | \(peaksPerRow[name].map { fmt($0, 1) } ?? "") |")
    }
    let refits = peaksPerRow[banks[0].0 + "#refits"] ?? 0
    let noRefit = results[banks[1].0]!.cpu
    let demand = (peaksPerRow[banks[1].0] ?? 0) / Double(POTConfiguration().refitAfterPeaks)
    print("")
    print("- refits/row done in the timed loop: \(fmt(refits, 3)); refit DEMAND = peaks/row ÷ refitAfterPeaks = \(fmt(demand, 1)) filters/row become due")
    print("- fit cost on 256 peaks: stub \(fmt(tStub / 1000, 2)) µs; representative Grimshaw (Brent, libspot-style) \(fmt(tRef / 1000, 1)) µs (\(fmt(evalsPerFit, 1)) w(x) evaluations/fit; one evaluation = \(fmt(tEval / 1000, 2)) µs, so a 50-evaluation fitter ≈ \(fmt(50 * tEval / 1000, 0)) µs)")
    print("- projected with the real fitter at 0.25 refits/row: \(fmt(noRefit + 0.25 * tRef, 0)) ns/row → \(fmt(1e9 / (noRefit + 0.25 * tRef), 0)) rows/s; keeping up with demand (\(fmt(demand, 1)) fits/row) would cost \(fmt(demand * tRef / 1000, 0)) µs/row → \(fmt(1e9 / (noRefit + demand * tRef), 0)) rows/s")
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

/// Runs the `current` and `compact` (and `bitmask`) prototypes on the same rows and compares their
/// whole state: they must agree exactly (same peaks, same order, same arithmetic).
func check(k: Int, level: Double) -> Bool {
    let cal = RowPool(filters: k, poolRows: 1000, seed: 1)
    let rows = RowPool(filters: k, poolRows: 2000, seed: 9)
    let a = ProtoBank(pool: cal, level: level), b = ProtoBank(pool: cal, level: level), c = ProtoBank(pool: cal, level: level)
    let d = ProtoBank(pool: cal, level: level), g = ProtoBank(pool: cal, level: level)
    var ok = true
    for r in 0..<2000 {
        let pa = a.scan(rows.row(r).baseAddress!, .current)
        let pb = b.scan(rows.row(r).baseAddress!, .compact)
        let pc = c.scan(rows.row(r).baseAddress!, .bitmask)
        let pd = d.scan(rows.row(r).baseAddress!, .compactPacked)
        let pg = g.scan(rows.row(r).baseAddress!, .compactGuard)
        if pa != pb || pa != pc || pa != pd || pa != pg || a.extremeCount != b.extremeCount || a.queueCount != b.queueCount { ok = false }
        for e in 0..<a.extremeCount where a.extremeOut[e] != b.extremeOut[e] { ok = false }
        if r % 4 == 3 { a.popDue(); b.popDue(); c.popDue(); d.popDue(); g.popDue() }
    }
    for j in 0..<k {
        if a.head[j] != b.head[j] || a.ringCount[j] != b.ringCount[j] || a.sinceFit[j] != b.sinceFit[j] || a.bsum[j] != b.bsum[j] || a.bsumsq[j] != b.bsumsq[j] { ok = false }
        if a.head[j] != c.head[j] || a.sinceFit[j] != c.sinceFit[j] || a.head[j] != g.head[j] { ok = false }
        if a.head[j] != UInt32(d.packed[j].head) || a.ringCount[j] != UInt32(d.packed[j].count) || a.sinceFit[j] != d.packed[j].since { ok = false }
    }
    for i in 0..<(k * a.cap) where a.ring[i].bitPattern != b.ring[i].bitPattern || a.ring[i].bitPattern != c.ring[i].bitPattern
        || a.ring[i].bitPattern != d.ring[i].bitPattern || a.ring[i].bitPattern != g.ring[i].bitPattern { ok = false; break }
    for q in 0..<a.queueCount where a.queue[(a.queueHead + q) % k] != b.queue[(b.queueHead + q) % k] { ok = false; break }
    print("check K=\(k) level=\(level): current vs bitmask/compact/compactGuard/compactPacked after 2000 rows: \(ok ? "IDENTICAL" : "DIFFERENT")")
    return ok
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
} else if args.count >= 2 && args[1] == "check" {
    var ok = true
    for k in [26_560, 4_800] { for level in [0.90, 0.98] { ok = check(k: k, level: level) && ok } }
    if !ok { exit(1) }
} else {
    print("usage: BankProfile profile [K ...] | BankProfile npy FILE.npy CALIBRATION LEVEL")
}
