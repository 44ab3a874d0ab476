// The model-level rule's null sample without a burn-in: 2-fold cross-fitting on the calibration
// rows (docs/alerting.md §4, issue 13).
import SaliencyCore

/// A bank's cross-fit request and result (one stored property of `FilterBank`).
struct CrossFitSlot {
    /// Histogram bins requested (`ModelShiftRule.histogramBins`); nil: no cross-fit at calibration end.
    var bins: Int? = nil
    /// The held-out histogram, computed at calibration end; taken once by the owner.
    var result: Result<[UInt64], SaliencyError>? = nil
}

extension FilterBank {
    // MARK: - Request and result

    /// Asks the bank to compute, when its calibration ends, the held-out histogram of distinct
    /// extreme filters per calibration row (`crossFitHistogram`), with `bins` bins (the last
    /// counting `≥ bins − 1`). Does nothing once calibrated (the rows are gone). O(1).
    public func requestCrossFit(bins: Int) {
        precondition(bins >= 2, "a cross-fit histogram needs at least 2 bins")
        guard !isCalibrated else { return }
        crossFit.bins = bins
    }

    /// Whether a cross-fit is requested and its calibration has not ended yet.
    public var crossFitRequested: Bool { crossFit.bins != nil && !isCalibrated }

    /// The result of the requested cross-fit, once (nil: none requested, not calibrated yet, or
    /// already taken). A failure says why (the owner falls back to a burn-in).
    public func takeCrossFit() -> Result<[UInt64], SaliencyError>? {
        defer { crossFit.result = nil }
        return crossFit.result
    }

    /// Called by `finishCalibration` with the bank's own calibration rows, before they are freed.
    func runCrossFitIfRequested(rows: UnsafePointer<Float>) {
        guard let bins = crossFit.bins else { return }
        crossFit.bins = nil
        let all = UnsafeBufferPointer(start: rows, count: configuration.calibration * filterCount)
        do {
            crossFit.result = .success(try Self.crossFitHistogram(rows: all, filterCount: filterCount, configuration: configuration,
                                                                  peakStride: peakStride, bins: bins, kernels: kernels))
        } catch {
            crossFit.result = .failure(error)
        }
    }

    // MARK: - The cross-fit

    /// The configuration of a fold's bank: `configuration` calibrated on `rows` rows, with the
    /// parent's ring stride pinned (an automatic stride depends on K only, but pinning it says so).
    static func crossFitConfiguration(_ configuration: POTConfiguration, rows: Int, peakStride: Int) -> POTConfiguration {
        var c = configuration
        c.calibration = rows
        c.peakStride = peakStride
        return c
    }

    /// The model-level rule's null sample from `n` calibration rows (`rows`: `n × filterCount`
    /// values, row-major, arrival order), by 2-fold cross-fitting:
    ///
    /// - fold 1: a bank with this `configuration` but `calibration = ⌊n/2⌋` is calibrated on the
    ///   first half A exactly as a bank calibrates (same thresholds, Grimshaw fits, zero modes,
    ///   DSPOT seeding, `finishCalibration`), then **monitors** the second half B through the same
    ///   `updateValidated` path a live bank runs (refits, censoring, the lower tail included);
    ///   for every row of B the number of distinct extremes (upper plus lower, as the alert tracker
    ///   receives them) goes into the histogram;
    /// - fold 2: the same with B (`n − ⌊n/2⌋` rows) calibrating and A monitored.
    ///
    /// So every calibration row is counted once, by tail models that never saw it: an extreme
    /// means exactly what it means to the monitoring bank. (Counting in-sample, with the models
    /// fitted on all `n` rows, underestimates the null about 2×: a fitted tail contains its own
    /// sample's extremes; docs/alerting.md §4.)
    ///
    /// Cost: two bank calibrations on `n/2` rows (each `K` sorts of `n/2` values and `K` Grimshaw
    /// fits per watched tail; the columns gathered in blocks and radix-sorted, `calibrateColumns`)
    /// plus `n` monitored rows (read whole, in place). Memory: one fold bank at a time without its
    /// own calibration buffer, and its calibration scratch (`crossFitTransientBytes`); `rows` is
    /// only read. `legacy`: as `finishCalibration`'s (the pre-2026-12 calibration end, for tests).
    ///
    /// - Throws: `.invalidConfiguration` when half the calibration is not a valid calibration for
    ///   these settings (e.g. `⌊n/2⌋·(1 − level) < min_peaks`, or DSPOT's `drift_window` leaves too
    ///   few residuals), or `n < 2`.
    public static func crossFitHistogram(rows: UnsafeBufferPointer<Float>, filterCount k: Int, configuration: POTConfiguration,
                                         peakStride: Int? = nil, bins: Int, kernels: Kernels = .best,
                                         legacy: Bool = false) throws(SaliencyError) -> [UInt64] {
        precondition(k >= 1 && bins >= 2 && rows.count % k == 0, "cross-fit needs whole rows of \(k) values and ≥ 2 bins")
        let n = rows.count / k
        let stride = peakStride ?? configuration.effectiveStride(filterCount: k)
        guard n >= 2 else { throw SaliencyError(.invalidConfiguration, "model-level cross-fit needs at least 2 calibration rows, got \(n)") }
        let half = n / 2
        var histogram = [UInt64](repeating: 0, count: bins)
        let base = rows.baseAddress!
        for (fitStart, fitCount, countStart, countCount) in [(0, half, half, n - half), (half, n - half, 0, half)] {
            let c = crossFitConfiguration(configuration, rows: fitCount, peakStride: stride)
            do { try c.validate() } catch {
                throw SaliencyError(.invalidConfiguration, "model-level cross-fit: half the calibration (\(fitCount) rows) is not a valid calibration: \(error.message); raise pot.calibration or use [alerting] model_null_sample = \"burn_in\"")
            }
            let fold = try FilterBank(filterCount: k, configuration: c, kernels: kernels)
            fold.rows = UInt64(fitCount)   // as if the rows had arrived through `update`
            fold.calibSeen = fitCount - 1
            fold.finishCalibration(from: base + fitStart * k, legacy: legacy)
            fold.checkInvariantsIfEnabled()
            for i in 0..<countCount {
                let r = fold.updateValidated(UnsafeBufferPointer(start: base + (countStart + i) * k, count: k))
                histogram[min(r.extremes + r.lowerExtremes, bins - 1)] &+= 1
            }
        }
        return histogram
    }

    /// The most memory a cross-fit claims on top of its parent bank (whose calibration buffer it
    /// reads): one fold bank's columns at a time (its own calibration buffer is allocated but never
    /// written, so no page of it is claimed — not counted), the fitter's scratch and the fold's
    /// calibration scratch (`calibrationScratchBytes`; the parent's is freed before the cross-fit
    /// runs). Nil on overflow.
    public static func crossFitTransientBytes(filterCount: Int, configuration: POTConfiguration) -> Int? {
        let c = crossFitConfiguration(configuration, rows: configuration.calibration - configuration.calibration / 2,
                                      peakStride: configuration.effectiveStride(filterCount: filterCount))
        let (columns, o) = filterCount.multipliedReportingOverflow(by: bytesPerFilter(c))
        let fitter = GrimshawCore.scratchBound(max(c.maxPeaks, c.calibration)) * MemoryLayout<Double>.size
        guard let scratch = calibrationScratchBytes(filterCount: filterCount, rows: c.calibration) else { return nil }
        let (total, o2) = columns.addingReportingOverflow(fitter + scratch + 4 * c.maxPeaks * MemoryLayout<Float>.size + 4096)
        return o || o2 ? nil : total
    }
}
