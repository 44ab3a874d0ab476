import SaliencyCore
import CKernels

extension FilterBank {
    // MARK: - Introspection

    /// Filters whose values were extreme exceedances in the last `update` (valid until the next one).
    public var lastExtremes: UnsafeBufferPointer<Int32> { UnsafeBufferPointer(start: storage.extremeOut, count: extremeCount) }

    /// Filters currently due for a refit. O(K).
    public var dueCount: Int { (0..<filterCount).reduce(0) { $0 + (storage.isDue[$1] ? 1 : 0) } }

    /// Upper bound on the rows between a filter becoming due and its refit (see type docs).
    public var maxRefitLagRows: Int? {
        configuration.refitsPerRow > 0 ? Int((Double(filterCount) / configuration.refitsPerRow).rounded(.up)) + 1 : nil
    }

    /// Everything known about filter `j`. O(1).

    public func report(filter j: Int) -> FilterReport {
        precondition(j >= 0 && j < filterCount)
        let (mean, sd) = isCalibrated ? moments(j) : (.nan, .nan)
        let tail: TailModel
        switch storage.method[j] {
        case 255: tail = .calibrating
        case GPDFitMethod.insufficientPeaks.rawValue: tail = .empirical
        case GPDFitMethod.exponential.rawValue: tail = .exponential
        case GPDFitMethod.moments.rawValue: tail = .moments
        default: tail = .gpd
        }
        return FilterReport(filter: j, threshold: storage.thrD[j], extremeThreshold: storage.extD[j], shape: storage.shape[j], scale: storage.scale[j],
                            tail: tail, n: isCalibrated ? nPOT(j) : UInt64(calibSeen), peaks: nt(j), peaksInRing: Int(storage.ringCount[j]),
                            peaksSinceFit: Int(storage.sinceFit[j]), extremes: storage.extremesTotal[j], due: storage.isDue[j], mean: mean, standardDeviation: sd,
                            driftMean: isCalibrated ? driftMean(j) : nil)
    }

}
