import SaliencyCore

/// Binary state of a FilterBank: everything needed to resume exactly where it stopped
/// (calibration buffer included while calibrating). Little-endian, versioned; the reader checks
/// every length and invariant and throws `corruptState` instead of trapping.
///
/// Version 1, in order: version u32; K u64; ring capacity u64; the pot settings (level, q,
/// calibration, max_peaks, min_peaks, refit_after_peaks, refits_per_row, drift_window); rows,
/// refits u64; calibrating bool; calibration rows i64; [the calibration buffer's rows while
/// calibrating]; every `.state` column of the storage table, in table order; queue head, queue
/// count, block fill i64, refit credit f64; every `.driftState` column (DSPOT only); the
/// rejection counts (u32 count, then name blob + u64 each, by name). The column sections are
/// written and read by iterating the table (FilterBank+Storage.swift), so the table's order is
/// the format: `Fixtures/filterbank_v1_*.bin` pins it.
///
/// Version 2 (written now; version 1 is still read, as an upper-only bank) adds, after the pot
/// settings, the tails u8 (0 upper, 1 lower, 2 both; bits 4–5: the row transform, 0 none, 1
/// layer-logres, 2 layer-ratio), and after the DSPOT state every
/// `.lowerState` column (lower or both only) followed by the lower refit queue's head and count
/// (i64). An upper-only version-2 state is the version-1 state plus that one byte.
extension FilterBank {
    static let stateVersion: UInt32 = 2
    static let tailCodes: [TailSelection] = [.upper, .lower, .both]
    static let transformCodes: [RowTransformKind] = [.none, .layerLogres, .layerRatio]

    /// Serializes the learned state. O(K · maxPeaks).
    public func serializedState() -> [UInt8] {
        var w = ByteWriter(capacity: serializedSizeBound)
        serialize(into: &w)
        return w.bytes
    }

    /// An upper bound on the size of `serializedState()`, for reserving capacity.
    public var serializedSizeBound: Int {
        filterCount * (bytesPerFilter + 16) + (isCalibrated ? 0 : calibSeen * filterCount * 4)
            + (storage.driftRing == nil ? 0 : filterCount * (configuration.driftWindow * 4 + 12)) + rejected.count * 64 + 256
    }

    /// Appends the state `serializedState()` returns to `w` (one copy of the state, into `w`).
    public func serialize(into w: inout ByteWriter) {
        let k = filterCount
        w.write(Self.stateVersion)
        w.write(UInt64(k)); w.write(UInt64(cap))
        let c = configuration
        w.write(c.level); w.write(c.q); w.write(Int64(c.calibration)); w.write(Int64(c.maxPeaks)); w.write(Int64(c.minPeaks))
        w.write(Int64(c.refitAfterPeaks)); w.write(c.refitsPerRow); w.write(Int64(c.driftWindow))
        // The transform (RowTransformKind) shares the tails byte: bits 4–5 (0 for none, so untransformed states are unchanged).
        w.write(UInt8(Self.tailCodes.firstIndex(of: c.tails)!) | UInt8(Self.transformCodes.firstIndex(of: c.transform)!) << 4)
        w.write(rows); w.write(refitCount)
        w.write(!isCalibrated)
        w.write(Int64(calibSeen))
        if let cb = storage.calibration { w.write(raw: cb, count: calibSeen * k) }
        storage.write(.state, into: &w)
        w.write(Int64(queueHead)); w.write(Int64(queueCount)); w.write(Int64(blockFill)); w.write(refitCredit)
        storage.write(.driftState, into: &w)
        if storage.lower != nil {
            storage.write(.lowerState, into: &w)
            w.write(Int64(lowerQueueHead)); w.write(Int64(lowerQueueCount))
        }
        w.write(UInt32(rejected.count))
        for (r, n) in rejected.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            w.write(blob: Array(r.rawValue.utf8)); w.write(n)
        }
    }

    /// Restores a bank from `serializedState()`. The configuration stored must match `configuration`
    /// in everything that shapes the state (level, q, calibration, peaks); refit budget may differ.
    /// `expected == nil` accepts the stored settings (inspection tools).
    public convenience init(restoring bytes: [UInt8], configuration expectedOrNil: POTConfiguration?, kernels: Kernels = .best) throws(SaliencyError) {
        var r = ByteReader(bytes)
        func bad(_ m: String) -> SaliencyError { SaliencyError(.corruptState, m) }
        let version = try r.read(UInt32.self, "version")
        guard version == 1 || version == Self.stateVersion else { throw SaliencyError(.unsupportedVersion, "FilterBank state version \(version); this build reads 1 and \(Self.stateVersion)") }
        // Sizes are checked before any conversion to Int: a u64 ≥ 2^63 must be an error, not a trap
        // (FuzzSnapshot finding; docs/fuzzing.md).
        let k64 = try r.read(UInt64.self, "filter count"), cap64 = try r.read(UInt64.self, "ring capacity")
        guard k64 >= 1, k64 <= 1 << 24, cap64 <= 1 << 16 else { throw bad("inconsistent header: K=\(k64), ring=\(cap64)") }
        let k = Int(k64), cap = Int(cap64)
        var c = POTConfiguration()
        c.level = try r.readDouble("level"); c.q = try r.readDouble("q")
        c.calibration = Int(try r.read(Int64.self)); c.maxPeaks = Int(try r.read(Int64.self)); c.minPeaks = Int(try r.read(Int64.self))
        c.refitAfterPeaks = Int(try r.read(Int64.self)); c.refitsPerRow = try r.readDouble(); c.driftWindow = Int(try r.read(Int64.self))
        if version >= 2 {
            let byte = Int(try r.read(UInt8.self, "tails"))
            let code = byte & 0x0F, tcode = byte >> 4
            guard code < Self.tailCodes.count else { throw bad("tails code \(code) unknown") }
            guard tcode < Self.transformCodes.count else { throw bad("transform code \(tcode) unknown") }
            c.tails = Self.tailCodes[code]
            c.transform = Self.transformCodes[tcode]
        }
        guard cap == c.maxPeaks, k >= 1, k <= 1 << 24 else { throw bad("inconsistent header: K=\(k), ring=\(cap), max_peaks=\(c.maxPeaks)") }
        do { try c.validate() } catch { throw bad("stored settings are invalid: \(error.message)") }
        let expected = expectedOrNil ?? c
        guard c.transform == expected.transform else {
            throw SaliencyError(.invalidConfiguration, "snapshot was learned on \(c.transform.rawValue) rows (pot.transform = \"\(c.transform.rawValue)\"); the configuration now says pot.transform = \"\(expected.transform.rawValue)\"")
        }
        guard c.tails == expected.tails else {
            throw SaliencyError(.invalidConfiguration, "snapshot was learned with tails = \(c.tails.rawValue); the configuration now says tails = \(expected.tails.rawValue)")
        }
        guard c.level == expected.level, c.q == expected.q, c.calibration == expected.calibration, c.maxPeaks == expected.maxPeaks,
              c.minPeaks == expected.minPeaks, c.refitAfterPeaks == expected.refitAfterPeaks, c.driftWindow == expected.driftWindow else {
            throw SaliencyError(.invalidConfiguration, "snapshot was learned with pot settings level=\(c.level) q=\(c.q) calibration=\(c.calibration) max_peaks=\(c.maxPeaks) min_peaks=\(c.minPeaks) refit_after_peaks=\(c.refitAfterPeaks); the configuration now says level=\(expected.level) q=\(expected.q) calibration=\(expected.calibration) max_peaks=\(expected.maxPeaks) min_peaks=\(expected.minPeaks) refit_after_peaks=\(expected.refitAfterPeaks)")
        }
        var live = expected
        live.refitsPerRow = expected.refitsPerRow
        // Cheap size check before allocating: the fixed part alone must be present.
        let fixed = k * Storage.layout(live).filter { $0.role == .state }.reduce(0) { $0 + $1.bytesPerFilter }
        guard r.remaining >= fixed else { throw bad("truncated: \(r.remaining) bytes left, the state of \(k) filters needs at least \(fixed)") }
        try self.init(filterCount: k, configuration: live, kernels: kernels)
        rows = try r.read(UInt64.self, "rows")
        refitCount = try r.read(UInt64.self, "refits")
        let calibrating = try r.readBool("phase")
        let seen = Int(try r.read(Int64.self, "calibration rows"))
        guard seen >= 0, seen <= c.calibration, calibrating || seen == c.calibration || seen == 0 else { throw bad("calibration progress \(seen) of \(c.calibration) is inconsistent") }
        if calibrating {
            guard seen < c.calibration else { throw bad("calibrating with a full buffer") }
            try r.read(raw: storage.calibration!, count: seen * k, "calibration buffer")
        } else {
            storage.releaseCalibration()
        }
        calibSeen = calibrating ? seen : c.calibration
        try storage.read(.state, from: &r)
        queueHead = Int(try r.read(Int64.self, "queue head")); queueCount = Int(try r.read(Int64.self, "queue count"))
        blockFill = Int(try r.read(Int64.self, "block fill")); refitCredit = try r.readDouble("refit credit")
        guard queueHead >= 0, queueHead < k, queueCount >= 0, queueCount <= k, blockFill >= 0, blockFill < Self.blockRows, refitCredit.isFinite else {
            throw bad("scheduler state out of range (head \(queueHead), count \(queueCount), block \(blockFill))")
        }
        for i in 0..<queueCount {
            let q = Int(storage.queue[(queueHead + i) % k])
            guard q >= 0, q < k, storage.inQueue[q] else { throw bad("refit queue entry \(q) invalid") }
        }
        let s = storage
        for j in 0..<k {
            guard Int(s.head[j]) < cap, Int(s.ringCount[j]) <= cap, s.method[j] == 255 || GPDFitMethod(rawValue: s.method[j]) != nil else {
                throw bad("filter \(j): ring head \(s.head[j]) / count \(s.ringCount[j]) / method \(s.method[j]) out of range")
            }
            guard calibrating || (s.scale[j] > 0 && s.thrD[j].isFinite) else { throw bad("filter \(j): scale \(s.scale[j]) or threshold \(s.thrD[j]) invalid") }
            guard UInt64(s.extremesTotal[j]) <= rows else { throw bad("filter \(j): more extremes than rows") }
            // A row adds at most one peak per filter: N_t = peaks at the fit + peaks since ≤ rows
            // (and the sum can then never overflow; FuzzSnapshot finding).
            guard s.ntAtFit[j] <= rows, UInt64(s.sinceFit[j]) <= rows - s.ntAtFit[j] else { throw bad("filter \(j): more peaks than rows") }
        }
        try storage.read(.driftState, from: &r)
        if let headD = s.driftHead, let sumD = s.driftSum {
            let d = c.driftWindow
            for j in 0..<k where Int(headD[j]) >= d || !sumD[j].isFinite { throw bad("filter \(j): drift window state out of range") }
        }
        if let L = s.lower {
            try storage.read(.lowerState, from: &r)
            lowerQueueHead = Int(try r.read(Int64.self, "lower queue head")); lowerQueueCount = Int(try r.read(Int64.self, "lower queue count"))
            guard lowerQueueHead >= 0, lowerQueueHead < k, lowerQueueCount >= 0, lowerQueueCount <= k else {
                throw bad("lower refit queue out of range (head \(lowerQueueHead), count \(lowerQueueCount))")
            }
            for i in 0..<lowerQueueCount {
                let q = Int(L.queue[(lowerQueueHead + i) % k])
                guard q >= 0, q < k, L.inQueue[q] else { throw bad("lower refit queue entry \(q) invalid") }
            }
            for j in 0..<k {
                guard Int(L.head[j]) < cap, Int(L.ringCount[j]) <= cap, L.method[j] == 255 || GPDFitMethod(rawValue: L.method[j]) != nil,
                      ZeroMode(rawValue: L.zeroMode[j]) != nil else {
                    throw bad("filter \(j): lower ring head \(L.head[j]) / count \(L.ringCount[j]) / method \(L.method[j]) / zero mode \(L.zeroMode[j]) out of range")
                }
                guard calibrating || (L.scale[j] > 0 && L.thrD[j].isFinite && L.thrD[j] >= 0 && L.extD[j] >= 0 && L.extD[j] <= L.thrD[j]) else {
                    throw bad("filter \(j): lower scale \(L.scale[j]) or thresholds \(L.thrD[j]), \(L.extD[j]) invalid")
                }
                guard L.extremesTotal[j] <= rows, L.zeros[j] <= rows, L.calZeros[j] <= L.zeros[j], L.zeroLast[j] <= rows,
                      UInt64(L.zeroRun[j]) <= L.zeros[j] else { throw bad("filter \(j): lower tail counts exceed the rows") }
                guard L.ntAtFit[j] <= rows, UInt64(L.sinceFit[j]) <= rows - L.ntAtFit[j] else { throw bad("filter \(j): more lower peaks than rows") }
                if !calibrating, let problem = lowerTailProblem(j) { throw bad("filter \(j): \(problem)") }
                if calibrating {
                    guard L.method[j] == 255, L.ringCount[j] == 0, L.extremesTotal[j] == 0, !L.isDue[j], !L.inQueue[j] else { throw bad("filter \(j): lower tail fitted while calibrating") }
                }
            }
        }
        let nRejected = try r.read(UInt32.self, "rejection reasons")
        guard nRejected <= 16 else { throw bad("\(nRejected) rejection reasons") }
        for _ in 0..<nRejected {
            let name = String(decoding: try r.readBlob("reason", limit: 64), as: UTF8.self)
            let n = try r.read(UInt64.self, "reason count")
            guard let reason = RowRejection(rawValue: name) else { throw bad("unknown rejection reason '\(name)'") }
            rejected[reason] = n
        }
        guard r.remaining == 0 else { throw bad("\(r.remaining) trailing bytes") }
        checkInvariantsIfEnabled()
    }
}

extension FilterBank.Storage {
    /// Appends every present column of `role` in table order, as raw little-endian elements.
    func write(_ role: Role, into w: inout ByteWriter) {
        for c in columns where c.role == role {
            guard let p = c.base else { continue }
            w.write(raw: p.assumingMemoryBound(to: UInt8.self), count: c.byteCount)
        }
    }

    /// Reads every present column of `role` in table order (the inverse of `write`). Bool
    /// columns are checked byte by byte (0 or 1) before anything reads them as `Bool`.
    func read(_ role: Role, from r: inout ByteReader) throws(SaliencyError) {
        for c in columns where c.role == role {
            guard let p = c.base else { continue }
            try r.read(raw: p.assumingMemoryBound(to: UInt8.self), count: c.byteCount, c.name)
            if c.isFlag {
                for i in 0..<c.byteCount {
                    let b = p.load(fromByteOffset: i, as: UInt8.self)
                    guard b <= 1 else { throw SaliencyError(.corruptState, "\(c.name): flag \(b) at \(i)") }
                }
            }
        }
    }
}
