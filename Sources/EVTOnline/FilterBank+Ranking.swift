import RealModule
import SaliencyCore
import CKernels

extension FilterBank {
    // MARK: - Scores and ranking

    /// Tail probability `p` and score `−log10 p` of value `s` for filter `j` (method.md §2).
    ///
    /// - Above a fitted threshold: `p = (N_t/n)·S_GPD(s − t)`. For a light tail (`γ < 0`) the fitted
    ///   endpoint `t + σ/|γ|` is a finite-sample estimate, often too low; `p` is therefore floored at
    ///   `(N_t/n)/(N_t + 1)`, the empirical probability of exceeding every peak seen, so a value
    ///   beyond the endpoint ranks high but cannot outrank a genuinely rare value of a heavy-tailed
    ///   filter for that reason alone (ties broken by the standardized excess).
    /// - Above the threshold without a fit (too few peaks): empirical tail of the ring,
    ///   `p = (N_t/n)·(#{peaks > y} + 1)/(peaks + 1)`.
    /// - At or below the threshold: `p = max(1 − F̂(s), N_t/n)` from the calibration sketch, so every
    ///   filter above its threshold outranks every filter below its own.
    /// Valid only once calibrated. `s` must be finite and ≥ 0.
    ///
    /// With the lower tail watched (`tails` lower or both) this is the smaller of the two tails'
    /// probabilities (`tail(filter:value:)` also says which); `upperTailProbability` is the above.
    public func tailProbability(filter j: Int, value s: Float) -> Double {
        configuration.tails == .upper ? upperTailProbability(filter: j, value: s) : tail(filter: j, value: s).p
    }

    /// The upper tail's probability `P(X ≥ s)` as described at `tailProbability`.
    public func upperTailProbability(filter j: Int, value s: Float) -> Double {
        precondition(isCalibrated, "tailProbability before calibration")
        let n = Double(nPOT(j)), ntj = Double(nt(j))
        let rate = ntj / n
        let sd = comparable(j, s)   // s, or the DSPOT residual s − M_j
        if sd > storage.thrD[j] {
            let y = sd - storage.thrD[j]
            if storage.method[j] == GPDFitMethod.insufficientPeaks.rawValue {
                let base = storage.ring + j * cap
                let c = Int(storage.ringCount[j])
                var above = 0
                for i in 0..<c where Double(base[i]) > y { above += 1 }
                return rate * Double(above + 1) / Double(c + 1)
            }
            let g = GPD(shape: storage.shape[j], scale: storage.scale[j])
            var p = rate * g.survival(excess: y)
            if g.shape < 0 { p = max(p, rate / (ntj + 1)) }
            return p
        }
        // Below: interpolate the sketch (quantiles at level·i/16).
        let sk = storage.sketch + j * Self.sketchPoints
        let m = Self.sketchPoints
        var cdf: Double
        if sd <= Double(sk[0]) {
            cdf = 0
        } else if sd >= Double(sk[m - 1]) {
            cdf = configuration.level
        } else {
            var lo = 0, hi = m - 1
            while hi - lo > 1 { let mid = (lo + hi) / 2; if Double(sk[mid]) <= sd { lo = mid } else { hi = mid } }
            let a = Double(sk[lo]), b = Double(sk[hi])
            let f = b > a ? (sd - a) / (b - a) : 1
            cdf = configuration.level * (Double(lo) + f) / Double(m - 1)
        }
        return max(1 - cdf, rate)
    }

    /// z-score `(s − μ_j)/σ_j` (σ = 1 when below 1e-14), moments as of the last merge plus the open block.
    public func zScore(filter j: Int, value s: Float) -> Double {
        let (mean, sd) = moments(j)
        return (Double(s) - mean) / (sd < 1e-14 ? 1 : sd)
    }

    /// Current mean and unbiased standard deviation of filter j, including the open block.
    public func moments(_ j: Int) -> (mean: Double, standardDeviation: Double) {
        var count = storage.wCount[j], mean = storage.wMean[j], m2 = storage.wM2[j]
        let nb = Double(blockFill) - Double(storage.blockExtremes[j])
        if nb > 0 {
            let s1 = Double(storage.bsum[j]), s2 = Double(storage.bsumsq[j])
            let meanB = Double(storage.shift[j]) + s1 / nb
            let m2B = max(0, s2 - s1 * s1 / nb)
            let total = count + nb
            let delta = meanB - mean
            mean += delta * nb / total
            m2 += m2B + delta * delta * count * nb / total
            count = total
        }
        return (mean, count > 1 ? (m2 / (count - 1)).squareRoot() : 0)
    }

    /// Scores every filter of `row` by `kind` into `out` (count K): `−log10 p` or the z-score.
    /// `newest`: `row` is the bank's newest row, so an exact 0 of the lower tail is scored with its
    /// current run of zeros (`lowerTailProbability(filter:value:newest:)`).
    public func score(_ row: UnsafeBufferPointer<Float>, by kind: ScoreKind, into out: UnsafeMutableBufferPointer<Double>, newest: Bool = false) {
        precondition(row.count == filterCount && out.count == filterCount)
        switch kind.tailModel {
        case .pot where newest && storage.lower != nil:
            for j in 0..<filterCount { out[j] = POT.score(p: tail(filter: j, value: row[j], newest: true).p) }
        case .pot:
            for j in 0..<filterCount { out[j] = POT.score(p: tailProbability(filter: j, value: row[j])) }
        case .zscore:
            for j in 0..<filterCount { out[j] = zScore(filter: j, value: row[j]) }
        case .pooledZscore:
            pooledZScores(row, into: out)
        default: preconditionFailure("tailModel is pot, zscore or pooled-zscore")
        }
    }

    /// The `k` highest-scoring filters of `row`, best first; every filter can rank (method.md §2).
    /// For POT, filters above their threshold always precede those below; ties (e.g. floored light
    /// tails) are broken by the standardized excess `(s − t)/σ`, then by index.
    public func top(_ row: UnsafeBufferPointer<Float>, k: Int, by kind: ScoreKind, newest: Bool = false) -> [RankedFilter] {
        precondition(isCalibrated, "top before calibration")
        let out = UnsafeMutableBufferPointer(start: storage.scores, count: filterCount)
        score(row, by: kind, into: out, newest: newest)
        return select(k: k, by: kind) { j in kind.tailModel == .pot ? self.tieBreak(j, row[j]) : 0 }
    }

    /// Ranks by the mean score over several rows (a recent window). Geometric mean of `p` for POT.
    public func top(rows: [UnsafeBufferPointer<Float>], k: Int, by kind: ScoreKind) -> [RankedFilter] {
        precondition(isCalibrated, "top before calibration")
        guard !rows.isEmpty else { return [] }
        let acc = UnsafeMutableBufferPointer<Double>.allocate(capacity: filterCount)
        defer { acc.deallocate() }
        acc.initialize(repeating: 0)
        let out = UnsafeMutableBufferPointer(start: storage.scores, count: filterCount)
        for r in rows {
            score(r, by: kind, into: out)
            for j in 0..<filterCount { acc[j] += out[j] }
        }
        let inv = 1 / Double(rows.count)
        for j in 0..<filterCount { out[j] = acc[j] * inv }
        return select(k: k, by: kind) { _ in 0 }
    }

    func tieBreak(_ j: Int, _ s: Float) -> Double {
        if let L = storage.lower, configuration.tails == .lower || direction(filter: j, value: s) == .lower {
            return Double(s) < L.thrD[j] ? (s > 0 ? Double.log(L.thrD[j] / Double(s)) / L.scale[j] : .infinity) : 0
        }
        let v = comparable(j, s)
        return v > storage.thrD[j] ? (v - storage.thrD[j]) / storage.scale[j] : 0
    }

    func select(k: Int, by kind: ScoreKind, tie: (Int) -> Double) -> [RankedFilter] {
        let kk = min(max(k, 0), filterCount)
        guard kk > 0 else { return [] }
        // Key: (score, tie, −index). Infinite scores sort first; NaN never occurs (inputs validated).
        func better(_ a: (Double, Double, Int), _ b: (Double, Double, Int)) -> Bool {
            if a.0 != b.0 { return a.0 > b.0 }
            if a.1 != b.1 { return a.1 > b.1 }
            return a.2 < b.2
        }
        // Min-heap of the best kk (worst at the root).
        var heap: [(Double, Double, Int)] = []
        heap.reserveCapacity(kk)
        func siftDown(_ i0: Int) {
            var i = i0
            while true {
                let l = 2 * i + 1, r = l + 1
                var w = i
                if l < heap.count, better(heap[w], heap[l]) { w = l }
                if r < heap.count, better(heap[w], heap[r]) { w = r }
                if w == i { return }
                heap.swapAt(i, w); i = w
            }
        }
        func siftUp(_ i0: Int) {
            var i = i0
            while i > 0 {
                let p = (i - 1) / 2
                if better(heap[p], heap[i]) { heap.swapAt(p, i); i = p } else { return }
            }
        }
        for j in 0..<filterCount {
            let key = (storage.scores[j], tie(j), j)
            if heap.count < kk {
                heap.append(key); siftUp(heap.count - 1)
            } else if better(key, heap[0]) {
                heap[0] = key; siftDown(0)
            }
        }
        heap.sort { better($0, $1) }
        return heap.map { key in
            let p: Double? = kind.tailModel == .pot ? Double.pow(10, -key.0) : nil
            return RankedFilter(filter: key.2, score: key.0, p: p)
        }
    }

}
