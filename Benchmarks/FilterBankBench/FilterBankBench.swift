// FilterBank hot path under package-benchmark.
//
// Every benchmark gets a bank that is already calibrated (1,000 rows) and warmed up (2,000 rows,
// so that the refit queue is in steady state) in `setup`, i.e. outside the measured body. One
// iteration = one row, taken from a pool of 64 pregenerated rows; the result is checked and
// black-holed. Benchmark names contain no spaces: package-benchmark 1.38.1 writes threshold files
// with spaces replaced by "_" but reads them back by the raw name, so a name with a space can
// never pass `thresholds check` ("Could not find any matching absolute thresholds").
// The bank's refits (default budget refitsPerRow = 0.25, FIFO) run inside the timed `update`,
// exactly as in the daemon. mallocCountTotal must stay 0 for update/validate.
import Benchmark
import BenchSupport
import EVTOnline
import SaliencyCore

/// Benchmark state: bank + its rows. Owned by one benchmark; package-benchmark runs one at a time.
final class BankState: @unchecked Sendable {
    // Isolation: created in setup, then used only by the single benchmark thread that runs its body.
    let bank: FilterBank
    let pool: RowPool
    var next = 0

    init(filters: Int, level: Double, refitsPerRow: Double = POTConfiguration().refitsPerRow) {
        var cfg = POTConfiguration()
        cfg.level = level
        // The ring sampling stride the default budget implies, whatever this bank's budget: with
        // refitsPerRow = 0 the automatic stride would fall to 1 and change more than the refits.
        var defaults = cfg
        defaults.refitsPerRow = POTConfiguration().refitsPerRow
        cfg.peakStride = defaults.effectiveStride(filterCount: filters)
        cfg.refitsPerRow = refitsPerRow
        pool = RowPool(filters: filters, poolRows: 64, seed: 1)
        do { bank = try FilterBank(filterCount: filters, configuration: cfg) } catch { fatalError("\(error)") }
        for i in 0..<(cfg.calibration + 2_000) { bank.updateValidated(pool.row(i)) }
        precondition(bank.isCalibrated)
        next = cfg.calibration + 2_000
    }

    @inline(__always) func nextRow() -> UnsafeBufferPointer<Float> {
        defer { next &+= 1 }
        return pool.row(next)
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 50,
        scalingFactor: .one,
        maxDuration: .seconds(3),
        maxIterations: 100_000
    )

    Benchmark("baseline.emptyBody") { benchmark in
        for i in benchmark.scaledIterations { blackHole(i) }
    }

    for (k, model) in [(26_560, "ResNet50"), (4_800, "ResNet18")] {   // model named in the benchmark id
        for level in [0.90, 0.98] {
            Benchmark("update.\(model).K\(k).level\(level == 0.90 ? "0.90" : "0.98")") { benchmark, state in
                var peaks = 0
                for _ in benchmark.scaledIterations {
                    let r = state.bank.update(state.nextRow())
                    precondition(r.rejected == nil && !r.calibrated)
                    peaks &+= r.peaks
                    blackHole(r)
                }
                blackHole(peaks)
            } setup: {
                BankState(filters: k, level: level)
            }
        }
    }

    // The scan alone: in-line refits disabled (refitsPerRow = 0, same ring stride as the
    // defaults), so the difference to the benchmark above is the refit share of `update`.
    Benchmark("update.ResNet50.K26560.level0.90.noRefits") { benchmark, state in
        for _ in benchmark.scaledIterations {
            let r = state.bank.updateValidated(state.nextRow())
            precondition(r.refits == 0)
            blackHole(r)
        }
    } setup: {
        BankState(filters: 26_560, level: 0.90, refitsPerRow: 0)
    }

    Benchmark("validate.K26560") { benchmark, state in
        for _ in benchmark.scaledIterations {
            let v = state.bank.validate(state.nextRow())
            precondition(v == nil)
            blackHole(v)
        }
    } setup: {
        BankState(filters: 26_560, level: 0.90)
    }

    // top(k: 20) allocates its result (and a small heap): its malloc threshold is > 0 by design.
    Benchmark("top20.pot.K26560") { benchmark, state in
        for _ in benchmark.scaledIterations {
            let t = state.bank.top(state.nextRow(), k: 20, by: .pot)
            precondition(t.count == 20)
            blackHole(t)
        }
    } setup: {
        BankState(filters: 26_560, level: 0.90)
    }
}

