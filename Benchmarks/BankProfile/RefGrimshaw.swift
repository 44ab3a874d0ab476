// A REPRESENTATIVE Grimshaw (1993) GPD maximum-likelihood fitter, used only to estimate what a
// refit will cost once the real fitter replaces Sources/EVTOnline/_Stubs.swift (whose stand-in
// fit is a single mean, ~100× cheaper). Same algorithm as libspot's tail fit: roots of
// w(x) = u(x)·v(x) − 1 on the negative and positive brackets by Brent's method, then the
// candidate with the best log-likelihood. Every evaluation is O(n) with one log1p per peak.
#if canImport(Glibc)
import Glibc
#endif

struct RefGrimshaw {
    var evaluations = 0

    mutating func w(_ y: UnsafeBufferPointer<Float>, _ x: Double) -> Double {
        evaluations += 1
        var u = 0.0, v = 0.0
        for p in y { let s = 1 + x * Double(p); u += 1 / s; v += log1p(x * Double(p)) }
        let n = Double(y.count)
        return (u / n) * (1 + v / n) - 1
    }

    mutating func brent(_ y: UnsafeBufferPointer<Float>, _ a0: Double, _ b0: Double, tol: Double = 1e-8) -> Double? {
        var a = a0, b = b0, fa = w(y, a), fb = w(y, b)
        guard fa * fb < 0 else { return nil }
        var c = a, fc = fa, d = b - a, e = d
        for _ in 0..<100 {
            if fb * fc > 0 { c = a; fc = fa; d = b - a; e = d }
            if abs(fc) < abs(fb) { a = b; b = c; c = a; fa = fb; fb = fc; fc = fa }
            let tol1 = 2 * Double.ulpOfOne * abs(b) + 0.5 * tol, xm = 0.5 * (c - b)
            if abs(xm) <= tol1 || fb == 0 { return b }
            if abs(e) >= tol1 && abs(fa) > abs(fb) {
                let s = fb / fa
                var p: Double, q: Double
                if a == c { p = 2 * xm * s; q = 1 - s } else {
                    let qq = fa / fc, r = fb / fc
                    p = s * (2 * xm * qq * (qq - r) - (b - a) * (r - 1)); q = (qq - 1) * (r - 1) * (s - 1)
                }
                if p > 0 { q = -q }
                p = abs(p)
                if 2 * p < min(3 * xm * q - abs(tol1 * q), abs(e * q)) { e = d; d = p / q } else { d = xm; e = d }
            } else { d = xm; e = d }
            a = b; fa = fb
            b += abs(d) > tol1 ? d : (xm > 0 ? tol1 : -tol1)
            fb = w(y, b)
        }
        return b
    }

    func logLik(_ y: UnsafeBufferPointer<Float>, shape g: Double, scale s: Double) -> Double {
        let n = Double(y.count)
        if abs(g) < 1e-12 { var sum = 0.0; for p in y { sum += Double(p) }; return -n * log(s) - sum / s }
        var l = 0.0
        for p in y { let a = g * Double(p) / s; if a <= -1 { return -.infinity }; l += log1p(a) }
        return -n * log(s) - (1 + 1 / g) * l
    }

    /// Returns (shape, scale).
    mutating func fit(_ y: UnsafeBufferPointer<Float>) -> (Double, Double) {
        var mn = Double.infinity, mx = 0.0, sum = 0.0
        for p in y { mn = min(mn, Double(p)); mx = max(mx, Double(p)); sum += Double(p) }
        let mean = sum / Double(y.count)
        let eps = 1e-8 / mean
        var best = (0.0, mean), bestL = logLik(y, shape: 0, scale: mean)
        var roots: [Double] = []
        if let r = brent(y, -1 / mx + eps, -eps) { roots.append(r) }
        let upper = 2 * (mean - mn) / (mn * mn + 1e-12)
        if upper > eps, let r = brent(y, eps, upper) { roots.append(r) }
        for x in roots {
            var v = 0.0; for p in y { v += log1p(x * Double(p)) }
            let g = v / Double(y.count), s = g / x
            let l = logLik(y, shape: g, scale: s)
            if l > bestL { bestL = l; best = (g, s) }
        }
        return best
    }
}
