// TEMPORARY: stand-ins with the agreed API until the GPD/Grimshaw branch lands. Delete on merge.
import RealModule
public struct GPD: Sendable, Hashable {
    public var shape: Double
    public var scale: Double
    public init(shape: Double, scale: Double) { self.shape = shape; self.scale = scale }
    public func survival(excess y: Double) -> Double { .exp(logSurvival(excess: y)) }
    public func logSurvival(excess y: Double) -> Double {
        if y <= 0 { return 0 }
        if abs(shape) < 1e-12 { return -y / scale }
        let a = shape * y / scale
        if a <= -1 { return -.infinity }
        return -(1 / shape) * .log(onePlus: a)
    }
    public func quantile(survival p: Double) -> Double {
        if abs(shape) < 1e-12 { return -scale * .log(p) }
        return scale / shape * (.pow(p, -shape) - 1)
    }
    public var endpoint: Double? { shape < 0 ? scale / -shape : nil }
}
public enum GPDFitMethod: UInt8, Sendable { case grimshaw, exponential, moments, insufficientPeaks }
public struct GPDFit: Sendable, Hashable { public var gpd: GPD; public var logLikelihood: Double; public var method: GPDFitMethod; public var peakCount: Int }
public struct GrimshawFitter: ~Copyable {
    public init(capacity: Int) {}
    public mutating func fit(_ peaks: UnsafeBufferPointer<Double>, minPeaks: Int) -> GPDFit {
        let f = peaks.map { Float($0) }
        return f.withUnsafeBufferPointer { fit($0, minPeaks: minPeaks) }
    }
    public mutating func fit(_ peaks: UnsafeBufferPointer<Float>, minPeaks: Int) -> GPDFit {
        var s = 0.0
        for p in peaks { s += Double(p) }
        let m = peaks.isEmpty ? 1 : s / Double(peaks.count)
        return GPDFit(gpd: GPD(shape: 0, scale: max(m, 1e-300)), logLikelihood: 0, method: peaks.count < minPeaks ? .insufficientPeaks : .exponential, peakCount: peaks.count)
    }
}
public enum POT {
    public static func extremeThreshold(threshold t: Double, gpd: GPD, q: Double, n: Double, peaks nt: Double) -> Double {
        let r = q * n / nt
        if abs(gpd.shape) < 1e-12 { return t - gpd.scale * .log(r) }
        return t + gpd.scale / gpd.shape * (.pow(r, -gpd.shape) - 1)
    }
    public static func tailProbability(value s: Double, threshold t: Double, gpd: GPD, n: Double, peaks nt: Double) -> Double {
        nt / n * gpd.survival(excess: s - t)
    }
    public static func score(p: Double) -> Double { p == 0 ? .infinity : -.log10(p) }
}
