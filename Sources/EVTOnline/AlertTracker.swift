// The alert state machine over all K filters of one model (docs/alerting.md).
import RealModule
import SaliencyCore

/// A change of alert state, emitted by `AlertTracker.record(row:extremes:into:)`.
public enum AlertTransition: Sendable, Hashable {
    /// Filter `filter` reached `count` (= `c`) extremes within the window and started firing.
    case fired(filter: Int, count: Int)
    /// Filter `filter` stayed below the resolve level for a whole window and stopped firing.
    case resolved(filter: Int)
    /// The model-level CUSUM crossed `h`: rows with ≥ `r` extremes became more frequent than the null.
    case modelFired(row: UInt64, statistic: Double)
    /// The mirrored CUSUM crossed `h`: the hit rate went back to the null.
    case modelResolved(row: UInt64)
    /// The model-level rule got its null sample (cross-fitted calibration rows, or the end of a
    /// burn-in); its CUSUM runs from the next row on with this calibration.
    case modelCalibrated(ModelShiftCalibration)
}

/// The model-level detector's state (plain data, part of snapshots).
public struct ModelShiftState: Sendable, Hashable, Codable {
    /// Burn-in histogram of distinct extremes per row (last bin: `≥ maxRowThreshold`); emptied once
    /// calibrated. Stays all-zero when a cross-fitted histogram arrives before the first row.
    public var histogram: [UInt64]
    /// Set when burn-in ends.
    public var calibration: ModelShiftCalibration?
    /// Upward CUSUM `S ≥ 0` (fires at `h`).
    public var cusum: Double
    /// Downward CUSUM `R ≥ 0` while firing (resolves at `h`).
    public var reverse: Double
    public var firing: Bool

    public init(histogram: [UInt64], calibration: ModelShiftCalibration? = nil, cusum: Double = 0, reverse: Double = 0, firing: Bool = false) {
        self.histogram = histogram
        self.calibration = calibration
        self.cusum = cusum
        self.reverse = reverse
        self.firing = firing
    }
}

/// Everything an `AlertTracker` knows, as plain arrays for snapshots.
public struct AlertTrackerState: Sendable, Hashable, Codable {
    public var filterCount: Int
    public var rule: AlertRule
    /// `K·c` stamps, filter-major: `ring[f·c + i]` = row + 1 of one of filter `f`'s last `c`
    /// extremes, `0` = empty.
    public var ring: [UInt64]
    /// `K` slots: `head[f]` is the ring slot of filter `f`'s most recent extreme.
    public var head: [UInt8]
    /// Firing filters, in the tracker's internal order (which fixes the order of resolve events).
    public var firing: [Int32]
    /// The last recorded row, if any.
    public var lastRow: UInt64?
    public var model: ModelShiftState
}

/// Per-filter alert state for `K` filters plus the model-level CUSUM.
///
/// Storage is struct-of-arrays, allocated once in `init` (`8·K·c + 5·K` bytes plus the histogram):
/// each filter keeps a ring of the row stamps of its last `c` extremes, so "c extremes within m
/// rows" is one subtraction (newest stamp − oldest stamp `< m`), and the `L`-th newest stamp tells
/// when the count fell below `L`. Firing filters sit in a dense list with back-pointers.
///
/// `record` is O(extremes in the row + firing filters), never O(K), and allocation-free as long as
/// the caller's `events` array has capacity (it only appends; **the caller clears it**).
///
/// Invariants: rows strictly increase; `head[f] < c`; a filter is in `firing` iff `slot[f] ≥ 0`, and
/// then `firing[slot[f]] == f`; a firing filter had ≥ `c` extremes within `m` rows at its firing row.
///
/// `~Copyable`: a copy would duplicate `O(K·c)` state and trigger copy-on-write reallocation.
public struct AlertTracker: ~Copyable, Sendable {
    public let filterCount: Int
    public let rule: AlertRule
    private let c: Int
    private let m: UInt64
    private var ring: [UInt64]
    private var head: [UInt8]
    private var slot: [Int32]
    private var firingList: [Int32]
    private var lastRow: UInt64?
    private var model: ModelShiftState

    /// A tracker with no history. Validates `rule` (precondition: call `rule.validate()` at the edge).
    public init(filterCount: Int, rule: AlertRule) {
        precondition(filterCount >= 1 && filterCount <= 1 << 24, "filterCount \(filterCount) out of 1...\(1 << 24)")
        precondition((try? rule.validate()) != nil, "invalid alert rule \(rule); call validate() first")
        self.filterCount = filterCount
        self.rule = rule
        self.c = rule.fireCount
        self.m = UInt64(rule.window)
        self.ring = [UInt64](repeating: 0, count: filterCount * rule.fireCount)
        self.head = [UInt8](repeating: 0, count: filterCount)
        self.slot = [Int32](repeating: -1, count: filterCount)
        self.firingList = []
        self.firingList.reserveCapacity(filterCount)
        self.lastRow = nil
        self.model = ModelShiftState(histogram: [UInt64](repeating: 0, count: rule.model.isEnabled ? rule.model.maxRowThreshold + 1 : 0))
    }

    /// Restores a snapshot; throws `.corruptState` if it is inconsistent.
    public init(state: AlertTrackerState) throws(SaliencyError) {
        func bad(_ m: String) -> SaliencyError { SaliencyError(.corruptState, "alert tracker snapshot: " + m) }
        do { try state.rule.validate() } catch { throw bad(error.message) }
        let k = state.filterCount, c = state.rule.fireCount
        guard k >= 1, k <= 1 << 24 else { throw bad("filter count \(k) out of range") }
        guard state.ring.count == k * c, state.head.count == k else {
            throw bad("ring has \(state.ring.count) stamps and head \(state.head.count) entries; expected \(k * c) and \(k)")
        }
        guard state.head.allSatisfy({ Int($0) < c }) else { throw bad("a head slot is ≥ c = \(c)") }
        let last = state.lastRow.map { $0 &+ 1 } ?? 0
        guard state.ring.allSatisfy({ $0 <= last }) else { throw bad("a ring stamp is later than the last row") }
        var slot = [Int32](repeating: -1, count: k)
        for (i, f) in state.firing.enumerated() {
            guard f >= 0, Int(f) < k, slot[Int(f)] < 0 else { throw bad("firing list holds \(f) twice or out of range") }
            slot[Int(f)] = Int32(i)
        }
        if state.rule.model.isEnabled, state.model.calibration == nil {
            guard state.model.histogram.count == state.rule.model.maxRowThreshold + 1 else { throw bad("burn-in histogram has the wrong size") }
        }
        self.filterCount = k
        self.rule = state.rule
        self.c = c
        self.m = UInt64(state.rule.window)
        self.ring = state.ring
        self.head = state.head
        self.slot = slot
        self.firingList = state.firing
        self.firingList.reserveCapacity(k)
        self.lastRow = state.lastRow
        self.model = state.model
    }

    /// A snapshot of the whole state. O(K·c), allocates.
    public var state: AlertTrackerState {
        AlertTrackerState(filterCount: filterCount, rule: rule, ring: ring, head: head, firing: firingList, lastRow: lastRow, model: model)
    }

    /// Records one prediction.
    ///
    /// - Parameters:
    ///   - row: the prediction's index; strictly increasing across calls (gaps count as rows
    ///     without extremes).
    ///   - extremes: the filters (`0..<filterCount`) whose value exceeded their extreme threshold
    ///     `z_q` in this row, in any order; duplicates are ignored.
    ///   - events: transitions are **appended** (fires in `extremes` order, then resolves, then
    ///     model events). The caller clears it and reserves capacity (≤ extremes + firing + 2 per
    ///     row) to stay allocation-free.
    ///
    /// O(`extremes.count` + `firing count`). Never throws; bad input traps (validate at the edge).
    public mutating func record(row: UInt64, extremes: UnsafeBufferPointer<Int32>, into events: inout [AlertTransition]) {
        if let lastRow { precondition(row > lastRow, "rows must strictly increase: got \(row) after \(lastRow)") }
        precondition(row < UInt64.max / 4, "row index too large")
        lastRow = row
        let stamp = row &+ 1
        let c = self.c, m = self.m, k = filterCount
        var distinct = 0
        // 1. Push extremes; fire on "c-th newest stamp is within the window".
        for f32 in extremes {
            let f = Int(f32)
            precondition(f >= 0 && f < k, "extreme filter \(f) out of 0..<\(k)")
            let base = f &* c
            let h = Int(head[f])
            if ring[base &+ h] == stamp { continue }  // duplicate in this row
            distinct &+= 1
            let nh = h &+ 1 == c ? 0 : h &+ 1
            ring[base &+ nh] = stamp
            head[f] = UInt8(truncatingIfNeeded: nh)
            guard slot[f] < 0 else { continue }
            let oldest = ring[base &+ (nh &+ 1 == c ? 0 : nh &+ 1)]  // c-th newest (== stamp when c = 1)
            if oldest != 0, stamp &- oldest < m {
                slot[f] = Int32(truncatingIfNeeded: firingList.count)
                firingList.append(f32)
                events.append(.fired(filter: f, count: c))
            }
        }
        // 2. Resolve: count < L since stamp e_L + m (e_L = L-th newest stamp); resolve after m such rows.
        let back = rule.resolveBelow &- 1
        let quiet = 2 &* m &- 1
        var i = 0
        while i < firingList.count {
            let f = Int(firingList[i])
            let h = Int(head[f])
            let eL = ring[f &* c &+ (h >= back ? h &- back : h &+ c &- back)]
            if eL == 0 || stamp &- eL >= quiet {
                let moved = firingList.removeLast()
                if i < firingList.count { firingList[i] = moved; slot[Int(moved)] = Int32(truncatingIfNeeded: i) }
                slot[f] = -1
                events.append(.resolved(filter: f))
            } else {
                i &+= 1
            }
        }
        // 3. Model level.
        if rule.model.isEnabled { recordModel(row: row, distinct: distinct, into: &events) }
    }

    /// Calibrates the model-level rule from a null-sample histogram computed elsewhere (the bank's
    /// cross-fit on its calibration rows, `FilterBank.crossFitHistogram`), so that its CUSUM runs
    /// from the next recorded row. Appends `.modelCalibrated`. Returns false (and changes nothing)
    /// when the rule is disabled, already calibrated, or the histogram is empty or has the wrong
    /// number of bins (`rule.model.histogramBins`): the tracker then keeps burning in. O(bins).
    @discardableResult
    public mutating func calibrateModel(histogram: [UInt64], source: ModelShiftNullSample = .crossFit,
                                        into events: inout [AlertTransition]) -> Bool {
        guard rule.model.isEnabled, model.calibration == nil, histogram.count == rule.model.histogramBins else { return false }
        var rows: UInt64 = 0
        for b in histogram { rows &+= b }
        guard rows > 0 else { return false }
        let cal = rule.model.calibrate(histogram: histogram, source: source)
        model.calibration = cal
        model.histogram = []
        model.cusum = 0
        model.reverse = 0
        model.firing = false
        events.append(.modelCalibrated(cal))
        return true
    }

    /// Burn-in rows recorded so far while the model-level rule is uncalibrated (0 once calibrated
    /// or disabled). O(bins).
    public var modelBurnInRows: Int {
        guard model.calibration == nil else { return 0 }
        var rows: UInt64 = 0
        for b in model.histogram { rows &+= b }
        return Int(rows)
    }

    private mutating func recordModel(row: UInt64, distinct: Int, into events: inout [AlertTransition]) {
        guard let cal = model.calibration else {
            let bins = model.histogram.count
            model.histogram[Swift.min(distinct, bins - 1)] &+= 1
            var rows: UInt64 = 0
            for b in model.histogram { rows &+= b }  // O(bins) during burn-in only
            if rows >= UInt64(rule.model.burnIn) {
                let cal = rule.model.calibrate(histogram: model.histogram, source: .burnIn)
                model.calibration = cal
                model.histogram = []
                events.append(.modelCalibrated(cal))
            }
            return
        }
        let inc = distinct >= cal.rowThreshold ? cal.hitIncrement : cal.missIncrement
        if !model.firing {
            model.cusum = Swift.max(0, model.cusum + inc)
            if model.cusum >= cal.threshold {
                model.firing = true
                model.reverse = 0
                events.append(.modelFired(row: row, statistic: model.cusum))
            }
        } else {
            model.reverse = Swift.max(0, model.reverse - inc)
            if model.reverse >= cal.threshold {
                model.firing = false
                model.cusum = 0
                model.reverse = 0
                events.append(.modelResolved(row: row))
            }
        }
    }

    /// Whether filter `filter` is firing. O(1).
    public func isFiring(_ filter: Int) -> Bool { slot[filter] >= 0 }

    /// Extremes of `filter` within the window ending at `row` (rows `row−m+1 ... row`), saturating at `c`
    /// (only the last `c` are kept). O(c).
    public func exceedances(inLastWindowOf filter: Int, at row: UInt64) -> Int {
        let stamp = row &+ 1
        var n = 0
        for i in 0..<c {
            let s = ring[filter &* c &+ i]
            if s != 0, s <= stamp, stamp &- s < m { n += 1 }
        }
        return n
    }

    /// The firing filters, in internal order. O(firing), allocates.
    public var firing: [Int] { firingList.map { Int($0) } }

    /// Number of firing filters. O(1).
    public var firingCount: Int { firingList.count }

    /// Whether the model-level alert is firing.
    public var isModelFiring: Bool { model.firing }

    /// The model-level calibration, once the null sample is in (cross-fit or burn-in).
    public var modelCalibration: ModelShiftCalibration? { model.calibration }

    /// Current upward CUSUM statistic of the model-level alert (0 until calibrated).
    public var modelStatistic: Double { model.cusum }
}
