import SaliencyCore
import CKernels

extension FilterBank {
    /// Every per-filter column of one bank, owned in one place.
    ///
    /// **The table is `Storage.init`**: one line per column gives its name, element type, count
    /// (per filter, per group of 8 filters, or fixed), initial value, temperature (how often the
    /// hot path touches it), where it lives (heap, huge pages, uninitialized) and its role
    /// (learned state in the snapshot, DSPOT state after the scheduler scalars, the calibration
    /// buffer, or scratch). Everything else is derived from that table by iterating it:
    /// allocation (`init`), release (`deinit`, once, for every column), the snapshot's column
    /// sections (`FilterBank+Snapshot.swift`, in table order, which *is* the version-1 wire order),
    /// `bytesPerFilter`, `maximumBytes` and the restore's size check. Adding a column is one
    /// table line (its typed `let` sits just above; the compiler rejects one without the other).
    ///
    /// The typed columns are plain `let` pointers of a final class, so the hot path reads them as
    /// before the redesign (one load each, hoisted out of loops). Not `Sendable`: it belongs to
    /// its bank.
    final class Storage {
        /// How many elements a column has.
        enum Count: Equatable {
            /// `n` per filter (`n · K` in all).
            case perFilter(Int)
            /// One per group of 8 filters, plus one (`K / 8 + 1`): the scan's event groups.
            case perEventGroup
            /// `n`, independent of K.
            case fixed(Int)
        }
        /// How often the hot path touches a column (documentation and layout reasoning only).
        enum Temperature { case hot, event, rare, cold }
        /// What a column's memory is and how it is first claimed.
        enum Placement {
            /// `allocate` + initialized to the column's initial value.
            case heap
            /// `saliency_alloc_huge`: zero pages claimed on first write, transparent huge pages
            /// for 2 MiB and more (the peak ring: events write it at random). Initial value 0.
            case hugePages
            /// `allocate`, never initialized: rows are written before they are read, so pages are
            /// claimed as data arrives (the calibration buffer).
            case uninitialized
        }
        /// Whether and where a column is part of the snapshot.
        enum Role: Equatable {
            /// Learned state: serialized in table order, before the scheduler scalars.
            case state
            /// DSPOT state: serialized after the scheduler scalars (present only with drift).
            case driftState
            /// Lower-tail state (`tails` lower or both): serialized after the DSPOT state, then
            /// the lower refit queue's scalars (state version 2).
            case lowerState
            /// The calibration buffer: the rows seen so far are serialized while calibrating.
            case calibration
            /// Recomputed or per-call: never serialized.
            case scratch
        }

        /// One table row, type-erased: what `deinit`, the snapshot and the size formulas iterate.
        struct Column {
            let name: String
            let elementSize: Int
            let count: Count
            let temperature: Temperature
            let placement: Placement
            let role: Role
            /// Elements allocated (0 for an absent optional column or a dry run).
            let elements: Int
            /// Bool columns: restore checks every byte is 0 or 1 before it is read as `Bool`.
            let isFlag: Bool
            /// nil: absent (optional column off, dry run) or released (calibration buffer).
            var base: UnsafeMutableRawPointer?

            var byteCount: Int { elements * elementSize }
            /// Bytes per filter of a `.perFilter` column (0 for the others).
            var bytesPerFilter: Int {
                if case .perFilter(let n) = count { return n * elementSize }
                return 0
            }
        }

        let filterCount: Int
        /// Ring capacity per filter (`configuration.maxPeaks`).
        let cap: Int
        /// The table, in declaration order (= snapshot order within each role).
        private(set) var columns: [Column] = []

        // MARK: The columns (every one has `filterCount` entries unless noted)

        // hot: every row's vector pass (saliency_scan_row) reads these, and writes the last three
        let thr: UnsafeMutablePointer<Float>       // t_j rounded toward −∞ (so s > thr ⇔ s > t exactly)
        let ext: UnsafeMutablePointer<Float>       // z_j rounded toward −∞; +∞ when no tail model
        let shift: UnsafeMutablePointer<Float>     // Float(μ_j) at the last merge
        let bsum: UnsafeMutablePointer<Float>      // Σ (s − shift) over the current block (non-extreme only)
        let bsumsq: UnsafeMutablePointer<Float>    // Σ (s − shift)²
        // per event (ring sample, extreme, filter becoming due)
        let head: UnsafeMutablePointer<UInt32>     // ring write position
        let ringCount: UnsafeMutablePointer<UInt32>
        let sinceFit: UnsafeMutablePointer<UInt32> // peaks since the last fit (also the ring-stride phase); hot
        let ring: UnsafeMutablePointer<Float>      // K × cap excesses s − t (negative: censored at z − t)
        let thrD: UnsafeMutablePointer<Double>     // exact t_j
        // per extreme
        let extremesTotal: UnsafeMutablePointer<UInt64>
        let blockExtremes: UnsafeMutablePointer<UInt16>
        // cold
        let ntAtFit: UnsafeMutablePointer<UInt64>  // N_t at the last fit (sinceFit adds the rest)
        let shape: UnsafeMutablePointer<Double>
        let scale: UnsafeMutablePointer<Double>
        let extD: UnsafeMutablePointer<Double>     // exact z_j
        let method: UnsafeMutablePointer<UInt8>    // GPDFitMethod raw value; 255 = calibrating
        let wCount: UnsafeMutablePointer<Double>   // Welford state as of the last block merge
        let wMean: UnsafeMutablePointer<Double>
        let wM2: UnsafeMutablePointer<Double>
        let sketch: UnsafeMutablePointer<Float>    // K × 17 quantiles of the calibration body
        let isDue: UnsafeMutablePointer<Bool>
        let inQueue: UnsafeMutablePointer<Bool>
        /// Filters whose tail model is held fixed (their alert is firing).
        let frozen: UnsafeMutablePointer<Bool>
        let queue: UnsafeMutablePointer<Int32>     // FIFO of due filters (capacity K)
        // DSPOT (drift_window d > 0, else nil): per filter the last d absorbed values, their write
        // position and running sum (recomputed exactly each time the position wraps).
        let driftRing: UnsafeMutablePointer<Float>?
        let driftHead: UnsafeMutablePointer<UInt32>?
        let driftSum: UnsafeMutablePointer<Double>?
        /// The lower tail's columns (`tails` = lower or both), nil for `upper`: an upper-only bank
        /// allocates and touches none of them.
        let lower: Lower?
        // scratch
        let extremeOut: UnsafeMutablePointer<Int32>  // filters of the last row's extremes
        let scores: UnsafeMutablePointer<Double>     // ranking
        /// Event groups of the last scan (K/8 + 1 entries): first filter, and a bit per event lane.
        let eventBase: UnsafeMutablePointer<Int32>
        let eventMask: UnsafeMutablePointer<UInt8>
        let fitScratch: UnsafeMutablePointer<Float>    // maxPeaks: a refit's observed excesses
        let censorScratch: UnsafeMutablePointer<Float> // maxPeaks: its censored ones
        /// `calibration × K` rows, row-major; nil once calibration has ended (`releaseCalibration`).
        private(set) var calibration: UnsafeMutablePointer<Float>?

        /// Allocates every column (`dryRun`: allocates nothing and only records the table, for the
        /// size formulas; the instance then must not be used).
        private init(filterCount k: Int, configuration c: POTConfiguration, dryRun: Bool) {
            filterCount = k
            cap = c.maxPeaks
            let d = c.driftWindow
            var t = Table(filterCount: k, dryRun: dryRun)
            // ─── The table. Within each role, this order is the snapshot's (state version 1). ───
            //           name                   initial      count                       temperature  placement     role
            thr        = t.add("thresholds",         Float.infinity, .perFilter(1),            .hot,   .heap,       .state)
            ext        = t.add("extreme thresholds", Float.infinity, .perFilter(1),            .hot,   .heap,       .state)
            shift      = t.add("shifts",             Float(0),       .perFilter(1),            .hot,   .heap,       .state)
            bsum       = t.add("block sums",         Float(0),       .perFilter(1),            .hot,   .heap,       .state)
            bsumsq     = t.add("block squares",      Float(0),       .perFilter(1),            .hot,   .heap,       .state)
            head       = t.add("ring heads",         UInt32(0),      .perFilter(1),            .event, .heap,       .state)
            ringCount  = t.add("ring counts",        UInt32(0),      .perFilter(1),            .event, .heap,       .state)
            sinceFit   = t.add("peaks since fit",    UInt32(0),      .perFilter(1),            .hot,   .heap,       .state)
            ring       = t.add("peak rings",         Float(0),       .perFilter(c.maxPeaks),   .event, .hugePages,  .state)
            thrD       = t.add("thresholds",         Double.infinity, .perFilter(1),           .event, .heap,       .state)
            extremesTotal = t.add("extreme counts",  UInt64(0),      .perFilter(1),            .rare,  .heap,       .state)
            blockExtremes = t.add("block extremes",  UInt16(0),      .perFilter(1),            .rare,  .heap,       .state)
            ntAtFit    = t.add("peak counts",        UInt64(0),      .perFilter(1),            .cold,  .heap,       .state)
            shape      = t.add("shapes",             Double(0),      .perFilter(1),            .cold,  .heap,       .state)
            scale      = t.add("scales",             Double(1),      .perFilter(1),            .cold,  .heap,       .state)
            extD       = t.add("extreme thresholds", Double.infinity, .perFilter(1),           .cold,  .heap,       .state)
            method     = t.add("fit methods",        UInt8(255),     .perFilter(1),            .cold,  .heap,       .state)
            wCount     = t.add("moment counts",      Double(0),      .perFilter(1),            .cold,  .heap,       .state)
            wMean      = t.add("means",              Double(0),      .perFilter(1),            .cold,  .heap,       .state)
            wM2        = t.add("M2",                 Double(0),      .perFilter(1),            .cold,  .heap,       .state)
            sketch     = t.add("sketches",           Float(0),       .perFilter(FilterBank.sketchPoints), .cold,  .heap,       .state)
            isDue      = t.add("due flags",          false,          .perFilter(1),            .event, .heap,       .state)
            inQueue    = t.add("queue flags",        false,          .perFilter(1),            .event, .heap,       .state)
            frozen     = t.add("frozen flags",       false,          .perFilter(1),            .event, .heap,       .state)
            queue      = t.add("refit queue",        Int32(0),       .perFilter(1),            .event, .heap,       .state)
            driftRing  = t.add("drift windows",      Float(0),       .perFilter(d),            .hot,   .heap,       .driftState, if: d > 0)
            driftHead  = t.add("drift heads",        UInt32(0),      .perFilter(1),            .hot,   .heap,       .driftState, if: d > 0)
            driftSum   = t.add("drift sums",         Double(0),      .perFilter(1),            .hot,   .heap,       .driftState, if: d > 0)
            let lo = c.tails.hasLower
            // Lower tail (docs/statistics.md, "Two tails"): the same tail state, on the reflected
            // excess t_low − s of the positive values, plus the zero atom's counters.
            if lo {
                lower = Lower(
                    thr:       t.add("lower thresholds",         Float(0),        .perFilter(1),          .hot,   .heap,      .lowerState),
                    ext:       t.add("lower extreme thresholds", Float(0),        .perFilter(1),          .hot,   .heap,      .lowerState),
                    sinceFit:  t.add("lower peaks since fit",    UInt32(0),       .perFilter(1),          .hot,   .heap,      .lowerState),
                    head:      t.add("lower ring heads",         UInt32(0),       .perFilter(1),          .event, .heap,      .lowerState),
                    ringCount: t.add("lower ring counts",        UInt32(0),       .perFilter(1),          .event, .heap,      .lowerState),
                    ring:      t.add("lower peak rings",         Float(0),        .perFilter(c.maxPeaks), .event, .hugePages, .lowerState),
                    thrD:      t.add("lower thresholds",         Double(0),       .perFilter(1),          .event, .heap,      .lowerState),
                    extremesTotal: t.add("lower extreme counts", UInt64(0),       .perFilter(1),          .rare,  .heap,      .lowerState),
                    zeros:     t.add("zero counts",              UInt64(0),       .perFilter(1),          .rare,  .heap,      .lowerState),
                    zeroLast:  t.add("last zero rows",           UInt64(0),       .perFilter(1),          .rare,  .heap,      .lowerState),
                    zeroRun:   t.add("zero runs",                UInt32(0),       .perFilter(1),          .rare,  .heap,      .lowerState),
                    ntAtFit:   t.add("lower peak counts",        UInt64(0),       .perFilter(1),          .cold,  .heap,      .lowerState),
                    shape:     t.add("lower shapes",             Double(0),       .perFilter(1),          .cold,  .heap,      .lowerState),
                    scale:     t.add("lower scales",             Double(1),       .perFilter(1),          .cold,  .heap,      .lowerState),
                    extD:      t.add("lower extreme thresholds", Double(0),       .perFilter(1),          .cold,  .heap,      .lowerState),
                    method:    t.add("lower fit methods",        UInt8(255),      .perFilter(1),          .cold,  .heap,      .lowerState),
                    zeroMode:  t.add("zero modes",               UInt8(0),        .perFilter(1),          .cold,  .heap,      .lowerState),
                    calZeros:  t.add("calibration zeros",        UInt64(0),       .perFilter(1),          .cold,  .heap,      .lowerState),
                    isDue:     t.add("lower due flags",          false,           .perFilter(1),          .event, .heap,      .lowerState),
                    inQueue:   t.add("lower queue flags",        false,           .perFilter(1),          .event, .heap,      .lowerState),
                    frozen:    t.add("lower frozen flags",       false,           .perFilter(1),          .event, .heap,      .lowerState),
                    queue:     t.add("lower refit queue",        Int32(0),        .perFilter(1),          .event, .heap,      .lowerState),
                    extremeOut: t.add("lower extremes out",      Int32(0),        .perFilter(1),          .rare,  .heap,      .scratch),
                    eventMask: t.add("lower event masks",        UInt8(0),        .perEventGroup,         .hot,   .heap,      .scratch),
                    eventList: t.add("event list",               Int32(0),        .perFilter(2),          .event, .heap,      .scratch))
            } else {
                lower = nil
            }
            extremeOut = t.add("extremes out",       Int32(0),       .perFilter(1),            .rare,  .heap,       .scratch)
            scores     = t.add("scores",             Double(0),      .perFilter(1),            .cold,  .heap,       .scratch)
            eventBase  = t.add("event bases",        Int32(0),       .perEventGroup,           .hot,   .heap,       .scratch)
            eventMask  = t.add("event masks",        UInt8(0),       .perEventGroup,           .hot,   .heap,       .scratch)
            fitScratch = t.add("fit scratch",        Float(0),       .fixed(c.maxPeaks),       .cold,  .heap,       .scratch)
            censorScratch = t.add("censor scratch",  Float(0),       .fixed(c.maxPeaks),       .cold,  .heap,       .scratch)
            calibration = t.add("calibration buffer", Float(0),      .perFilter(c.calibration), .hot,  .uninitialized, .calibration, if: true)
            columns = t.columns
        }

        /// Allocates every column of a bank of `filterCount` filters at `configuration`.
        convenience init(filterCount: Int, configuration: POTConfiguration) {
            self.init(filterCount: filterCount, configuration: configuration, dryRun: false)
        }

        /// The table at `configuration`, without allocating anything (for the size formulas).
        static func layout(_ configuration: POTConfiguration) -> [Column] {
            Storage(filterCount: 8, configuration: configuration, dryRun: true).columns
        }

        deinit {
            for c in columns { Self.free(c) }
        }

        /// Frees the calibration buffer (calibration ended, or a monitoring state was restored).
        func releaseCalibration() {
            guard calibration != nil, let i = columns.firstIndex(where: { $0.role == .calibration }) else { return }
            Self.free(columns[i])
            columns[i].base = nil
            calibration = nil
        }

        private static func free(_ c: Column) {
            guard let p = c.base else { return }
            switch c.placement {
            case .hugePages: saliency_free_huge(p, c.byteCount)
            case .heap, .uninitialized: p.deallocate()
            }
        }

        /// Builds the table: allocates each column as it is declared and records it.
        private struct Table {
            let filterCount: Int
            let dryRun: Bool
            var columns: [Column] = []

            func elements(_ count: Count) -> Int {
                switch count {
                case .perFilter(let n): return n * filterCount
                case .perEventGroup: return filterCount / 8 + 1
                case .fixed(let n): return n
                }
            }

            /// An optional column: allocated (and recorded as present) only when `present`.
            mutating func add<T: BitwiseCopyable>(_ name: String, _ initial: T, _ count: Count, _ temperature: Temperature,
                                                  _ placement: Placement, _ role: Role, if present: Bool) -> UnsafeMutablePointer<T>? {
                let n = present && !dryRun ? elements(count) : 0
                var base: UnsafeMutablePointer<T>? = nil
                if n > 0 {
                    switch placement {
                    case .heap:
                        let p = UnsafeMutablePointer<T>.allocate(capacity: n)
                        p.initialize(repeating: initial, count: n)
                        base = p
                    case .hugePages:
                        // Zero pages: only an all-zero initial value is representable.
                        withUnsafeBytes(of: initial) { precondition($0.allSatisfy { $0 == 0 }, "huge-page column \(name) must start at zero") }
                        guard let raw = saliency_alloc_huge(n * MemoryLayout<T>.stride) else {
                            fatalError("out of memory allocating \(n * MemoryLayout<T>.stride) bytes of \(name)")
                        }
                        base = raw.bindMemory(to: T.self, capacity: n)
                    case .uninitialized:
                        base = .allocate(capacity: n)
                    }
                }
                if present {
                    columns.append(Column(name: name, elementSize: MemoryLayout<T>.stride, count: count, temperature: temperature,
                                          placement: placement, role: role, elements: n, isFlag: T.self == Bool.self,
                                          base: base.map(UnsafeMutableRawPointer.init)))
                }
                return base
            }

            /// A column every bank has.
            mutating func add<T: BitwiseCopyable>(_ name: String, _ initial: T, _ count: Count, _ temperature: Temperature,
                                                  _ placement: Placement, _ role: Role) -> UnsafeMutablePointer<T> {
                if dryRun {
                    _ = add(name, initial, count, temperature, placement, role, if: true)
                    // Never dereferenced: a dry-run instance only lends its table to the size formulas.
                    return UnsafeMutablePointer(bitPattern: MemoryLayout<T>.alignment)!
                }
                return add(name, initial, count, temperature, placement, role, if: true)!
            }
        }
    }

    /// The lower tail's columns (see `Storage.init` for each one's role).
    struct Lower {
        let thr: UnsafeMutablePointer<Float>        // t_low rounded toward +∞ (s < thr ⇔ s < t_low exactly)
        let ext: UnsafeMutablePointer<Float>        // z_low rounded toward +∞; −0.0: zero watch; +0.0: nothing extreme
        let sinceFit: UnsafeMutablePointer<UInt32>
        let head: UnsafeMutablePointer<UInt32>
        let ringCount: UnsafeMutablePointer<UInt32>
        let ring: UnsafeMutablePointer<Float>       // K × cap excesses log(t_low/s) (negative: censored at log(t_low/z_low))
        let thrD: UnsafeMutablePointer<Double>      // exact t_low (0: no positive part)
        let extremesTotal: UnsafeMutablePointer<UInt64>
        let zeros: UnsafeMutablePointer<UInt64>     // exact zeros counted (calibration included)
        let zeroLast: UnsafeMutablePointer<UInt64>  // row number of the last counted zero
        let zeroRun: UnsafeMutablePointer<UInt32>   // consecutive zeros ending at zeroLast
        let ntAtFit: UnsafeMutablePointer<UInt64>
        let shape: UnsafeMutablePointer<Double>
        let scale: UnsafeMutablePointer<Double>
        let extD: UnsafeMutablePointer<Double>      // exact z_low (≤ t_low; 0: no positive value is extreme)
        let method: UnsafeMutablePointer<UInt8>
        let zeroMode: UnsafeMutablePointer<UInt8>   // FilterBank.ZeroMode raw value
        let calZeros: UnsafeMutablePointer<UInt64>  // zeros in the calibration sample
        let isDue: UnsafeMutablePointer<Bool>
        let inQueue: UnsafeMutablePointer<Bool>
        let frozen: UnsafeMutablePointer<Bool>
        let queue: UnsafeMutablePointer<Int32>
        let extremeOut: UnsafeMutablePointer<Int32>
        let eventMask: UnsafeMutablePointer<UInt8>  // the fused pass's lower-tail lanes per group
        let eventList: UnsafeMutablePointer<Int32>  // 2K: the fused pass's events, upper j or lower ~j (scanBoth)
    }

    // MARK: - Sizes, from the table

    /// Bytes of learned state per filter at `configuration` (excluding the calibration buffer):
    /// every per-filter column, plus the per-8-filter event groups rounded up to a byte per filter.
    public static func bytesPerFilter(_ configuration: POTConfiguration) -> Int {
        let table = Storage.layout(configuration).filter { $0.role != .calibration }
        let perFilter = table.reduce(0) { $0 + $1.bytesPerFilter }
        let perGroup = table.reduce(0) { $0 + ($1.count == .perEventGroup ? $1.elementSize : 0) }
        return perFilter + (perGroup + 7) / 8
    }

    /// The most memory a bank of `filterCount` filters at `configuration` can claim: every column,
    /// the peak rings, the calibration buffer (`calibration × K` floats, freed once calibrated),
    /// the fitter's scratch, the calibration end's scratch (≤ 1 MiB + 16 bytes per row + 4 KiB). Nil when that does not fit in an `Int` (a hostile size). Admission
    /// control budgets models with it before anything is allocated; the pages themselves are
    /// claimed as rows arrive. `configuration` must be valid.
    public static func maximumBytes(filterCount: Int, configuration: POTConfiguration) -> Int? {
        guard filterCount >= 0 else { return nil }
        let table = Storage.layout(configuration)
        let perFilter = bytesPerFilter(configuration)
        var calibBytes = 0, fixedColumns = 0, o1 = false
        for c in table {
            switch (c.role, c.count) {
            case (.calibration, .perFilter(let n)): (calibBytes, o1) = n.multipliedReportingOverflow(by: c.elementSize)
            case (_, .fixed(let n)): fixedColumns += n * c.elementSize
            default: break
            }
        }
        let (perFilterAll, o2) = perFilter.addingReportingOverflow(calibBytes)
        let (columns, o3) = filterCount.multipliedReportingOverflow(by: perFilterAll)
        let fitter = GrimshawCore.scratchBound(max(configuration.maxPeaks, configuration.calibration)) * MemoryLayout<Double>.size
        // The calibration end's scratch (gathered columns, sort buffer; FilterBank+Calibration.swift).
        guard let scratch = calibrationScratchBytes(filterCount: filterCount, rows: configuration.calibration) else { return nil }
        let fixed = fitter + fixedColumns + scratch + 4096
        let (total, o4) = columns.addingReportingOverflow(fixed)
        return o1 || o2 || o3 || o4 ? nil : total
    }

    /// Bytes of learned state per filter at this configuration (excluding the transient calibration buffer).
    public var bytesPerFilter: Int { Self.bytesPerFilter(configuration) }
}
