import SaliencyCore

/// Binary state of a FilterBank: everything needed to resume exactly where it stopped
/// (calibration buffer included while calibrating). Little-endian, versioned; the reader checks
/// every length and invariant and throws `corruptState` instead of trapping.
extension FilterBank {
    static let stateVersion: UInt32 = 1

    /// Serializes the learned state. O(K · maxPeaks).
    public func serializedState() -> [UInt8] {
        var w = ByteWriter(capacity: serializedSizeBound)
        serialize(into: &w)
        return w.bytes
    }

    /// An upper bound on the size of `serializedState()`, for reserving capacity.
    public var serializedSizeBound: Int {
        filterCount * (bytesPerFilter + 16) + (calib == nil ? 0 : calibSeen * filterCount * 4)
            + (driftRing == nil ? 0 : filterCount * (configuration.driftWindow * 4 + 12)) + rejected.count * 64 + 256
    }

    /// Appends the state `serializedState()` returns to `w` (one copy of the state, into `w`).
    public func serialize(into w: inout ByteWriter) {
        let k = filterCount
        w.write(Self.stateVersion)
        w.write(UInt64(k)); w.write(UInt64(cap))
        let c = configuration
        w.write(c.level); w.write(c.q); w.write(Int64(c.calibration)); w.write(Int64(c.maxPeaks)); w.write(Int64(c.minPeaks))
        w.write(Int64(c.refitAfterPeaks)); w.write(c.refitsPerRow); w.write(Int64(c.driftWindow))
        w.write(rows); w.write(refitCount)
        w.write(calib != nil)
        w.write(Int64(calibSeen))
        if let cb = calib { w.write(raw: cb, count: calibSeen * k) }
        w.write(raw: thr, count: k); w.write(raw: ext, count: k); w.write(raw: shift, count: k)
        w.write(raw: bsum, count: k); w.write(raw: bsumsq, count: k)
        w.write(raw: head, count: k); w.write(raw: ringCount, count: k); w.write(raw: sinceFit, count: k)
        w.write(raw: ring, count: k * cap); w.write(raw: thrD, count: k)
        w.write(raw: extremesTotal, count: k); w.write(raw: blockExtremes, count: k)
        w.write(raw: ntAtFit, count: k); w.write(raw: shape, count: k); w.write(raw: scale, count: k)
        w.write(raw: extD, count: k); w.write(raw: method, count: k)
        w.write(raw: wCount, count: k); w.write(raw: wMean, count: k); w.write(raw: wM2, count: k)
        w.write(raw: sketch, count: k * Self.sketchPoints)
        w.write(raw: isDue, count: k); w.write(raw: inQueue, count: k); w.write(raw: frozen, count: k); w.write(raw: queue, count: k)
        w.write(Int64(queueHead)); w.write(Int64(queueCount)); w.write(Int64(blockFill)); w.write(refitCredit)
        if let ringD = driftRing, let headD = driftHead, let sumD = driftSum {
            let d = configuration.driftWindow
            w.write(raw: ringD, count: k * d); w.write(raw: headD, count: k); w.write(raw: sumD, count: k)
        }
        w.write(UInt32(rejected.count))
        for (r, n) in rejected.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            w.write(blob: Array(r.rawValue.utf8)); w.write(n)
        }
    }

    /// Restores a bank from `serializedState()`. The configuration stored must match `configuration`
    /// in everything that shapes the state (level, q, calibration, peaks); refit budget may differ.
    /// `expected == nil` accepts the stored settings (inspection tools).
    public convenience init(restoring bytes: [UInt8], configuration expectedOrNil: POTConfiguration?) throws(SaliencyError) {
        var r = ByteReader(bytes)
        func bad(_ m: String) -> SaliencyError { SaliencyError(.corruptState, m) }
        let version = try r.read(UInt32.self, "version")
        guard version == Self.stateVersion else { throw SaliencyError(.unsupportedVersion, "FilterBank state version \(version); this build reads \(Self.stateVersion)") }
        let k = Int(try r.read(UInt64.self, "filter count"))
        let cap = Int(try r.read(UInt64.self, "ring capacity"))
        var c = POTConfiguration()
        c.level = try r.readDouble("level"); c.q = try r.readDouble("q")
        c.calibration = Int(try r.read(Int64.self)); c.maxPeaks = Int(try r.read(Int64.self)); c.minPeaks = Int(try r.read(Int64.self))
        c.refitAfterPeaks = Int(try r.read(Int64.self)); c.refitsPerRow = try r.readDouble(); c.driftWindow = Int(try r.read(Int64.self))
        guard cap == c.maxPeaks, k >= 1, k <= 1 << 24 else { throw bad("inconsistent header: K=\(k), ring=\(cap), max_peaks=\(c.maxPeaks)") }
        do { try c.validate() } catch { throw bad("stored settings are invalid: \(error.message)") }
        let expected = expectedOrNil ?? c
        guard c.level == expected.level, c.q == expected.q, c.calibration == expected.calibration, c.maxPeaks == expected.maxPeaks,
              c.minPeaks == expected.minPeaks, c.refitAfterPeaks == expected.refitAfterPeaks, c.driftWindow == expected.driftWindow else {
            throw SaliencyError(.invalidConfiguration, "snapshot was learned with pot settings level=\(c.level) q=\(c.q) calibration=\(c.calibration) max_peaks=\(c.maxPeaks) min_peaks=\(c.minPeaks) refit_after_peaks=\(c.refitAfterPeaks); the configuration now says level=\(expected.level) q=\(expected.q) calibration=\(expected.calibration) max_peaks=\(expected.maxPeaks) min_peaks=\(expected.minPeaks) refit_after_peaks=\(expected.refitAfterPeaks)")
        }
        var live = expected
        live.refitsPerRow = expected.refitsPerRow
        // Cheap size check before allocating: the fixed part alone must be present.
        let fixed = k * (5 * 4 + 3 * 4 + cap * 4 + 8 + 8 + 2 + 8 + 8 + 8 + 8 + 1 + 8 + 8 + 8 + Self.sketchPoints * 4 + 1 + 1 + 1 + 4)
        guard r.remaining >= fixed else { throw bad("truncated: \(r.remaining) bytes left, the state of \(k) filters needs at least \(fixed)") }
        try self.init(filterCount: k, configuration: live)
        rows = try r.read(UInt64.self, "rows")
        refitCount = try r.read(UInt64.self, "refits")
        let calibrating = try r.readBool("phase")
        let seen = Int(try r.read(Int64.self, "calibration rows"))
        guard seen >= 0, seen <= c.calibration, calibrating || seen == c.calibration || seen == 0 else { throw bad("calibration progress \(seen) of \(c.calibration) is inconsistent") }
        if calibrating {
            guard seen < c.calibration else { throw bad("calibrating with a full buffer") }
            try r.read(raw: calib!, count: seen * k, "calibration buffer")
        } else {
            calib?.deallocate()
            calib = nil
        }
        calibSeen = calibrating ? seen : c.calibration
        try r.read(raw: thr, count: k, "thresholds"); try r.read(raw: ext, count: k, "extreme thresholds"); try r.read(raw: shift, count: k, "shifts")
        try r.read(raw: bsum, count: k, "block sums"); try r.read(raw: bsumsq, count: k, "block squares")
        try r.read(raw: head, count: k, "ring heads"); try r.read(raw: ringCount, count: k, "ring counts"); try r.read(raw: sinceFit, count: k, "peaks since fit")
        try r.read(raw: ring, count: k * cap, "peak rings"); try r.read(raw: thrD, count: k, "thresholds")
        try r.read(raw: extremesTotal, count: k, "extreme counts"); try r.read(raw: blockExtremes, count: k, "block extremes")
        try r.read(raw: ntAtFit, count: k, "peak counts"); try r.read(raw: shape, count: k, "shapes"); try r.read(raw: scale, count: k, "scales")
        try r.read(raw: extD, count: k, "extreme thresholds"); try r.read(raw: method, count: k, "fit methods")
        try r.read(raw: wCount, count: k, "moment counts"); try r.read(raw: wMean, count: k, "means"); try r.read(raw: wM2, count: k, "M2")
        try r.read(raw: sketch, count: k * Self.sketchPoints, "sketches")
        // Bool columns: validate bytes before trusting them as Bool.
        let flags = UnsafeMutablePointer<UInt8>.allocate(capacity: 3 * k)
        defer { flags.deallocate() }
        try r.read(raw: flags, count: 3 * k, "due/queue/frozen flags")
        for j in 0..<(3 * k) where flags[j] > 1 { throw bad("flag \(flags[j]) at \(j)") }
        for j in 0..<k { isDue[j] = flags[j] == 1; inQueue[j] = flags[k + j] == 1; frozen[j] = flags[2 * k + j] == 1 }
        try r.read(raw: queue, count: k, "refit queue")
        queueHead = Int(try r.read(Int64.self, "queue head")); queueCount = Int(try r.read(Int64.self, "queue count"))
        blockFill = Int(try r.read(Int64.self, "block fill")); refitCredit = try r.readDouble("refit credit")
        guard queueHead >= 0, queueHead < k, queueCount >= 0, queueCount <= k, blockFill >= 0, blockFill < Self.blockRows, refitCredit.isFinite else {
            throw bad("scheduler state out of range (head \(queueHead), count \(queueCount), block \(blockFill))")
        }
        for i in 0..<queueCount {
            let q = Int(queue[(queueHead + i) % k])
            guard q >= 0, q < k, inQueue[q] else { throw bad("refit queue entry \(q) invalid") }
        }
        for j in 0..<k {
            guard Int(head[j]) < cap, Int(ringCount[j]) <= cap, method[j] == 255 || GPDFitMethod(rawValue: method[j]) != nil else {
                throw bad("filter \(j): ring head \(head[j]) / count \(ringCount[j]) / method \(method[j]) out of range")
            }
            guard calibrating || (scale[j] > 0 && thrD[j].isFinite) else { throw bad("filter \(j): scale \(scale[j]) or threshold \(thrD[j]) invalid") }
            guard UInt64(extremesTotal[j]) <= rows else { throw bad("filter \(j): more extremes than rows") }
        }
        if let ringD = driftRing, let headD = driftHead, let sumD = driftSum {
            let d = c.driftWindow
            try r.read(raw: ringD, count: k * d, "drift windows"); try r.read(raw: headD, count: k, "drift heads"); try r.read(raw: sumD, count: k, "drift sums")
            for j in 0..<k where Int(headD[j]) >= d || !sumD[j].isFinite { throw bad("filter \(j): drift window state out of range") }
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
    }
}
