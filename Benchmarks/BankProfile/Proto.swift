// PROTOTYPE COPY of FilterBank's monitoring hot path (scan + peak handling + refit queue), for
// measuring layout changes only. Never shipped; the owner of Sources/EVTOnline applies what helps.
// `Variant.current` mirrors Sources/EVTOnline/FilterBank.swift (scan/handleExceedance/markDue)
// statement for statement, so its timing must match the real bank with refitsPerRow = 0.
import BenchSupport
import EVTOnline
import SaliencyCore

enum Variant: String, CaseIterable {
    case momentsOnly      // vector pass only: no per-peak work (lower bound of any scan)
    case current          // = FilterBank.scan/handleExceedance today
    case noRing           // current, minus the ring store (attributes the ring's cache misses)
    case bitmask          // current, lanes visited via a movemask-style bitmask + trailingZeroBitCount
    case packed           // bitmask + per-filter peak state packed in one 16-byte record
    case packedFloatExcess// packed + excess computed in Float against the Float threshold (no Double)
    case inbox4           // bitmask + a 16-byte per-filter inbox: the ring gets one aligned 16-byte
                          // store per 4 peaks (refits flush the ≤ 3 pending peaks first)
    case inbox4Float      // inbox4 + Float excess
    case compact          // two passes, no data-dependent branch in either: (1) the vector pass
                          // appends the indices of its peak lanes to a list via a 256-entry lane
                          // table (one 32-byte store + popcount per 8 filters); (2) a loop over
                          // the list does the per-peak work. No lane branch mispredicts, so the
                          // ring stores' cache misses overlap.
    case compactGuard     // compact, with the list store skipped when no lane is a peak
    case compactPacked    // compact + the per-peak state (head, count, sinceFit, exact t) in one
                          // 16-byte record: one cache line per peak instead of four
}

final class ProtoBank {
    let k: Int, cap: Int, refitAfter: UInt32
    let thr: UnsafeMutablePointer<Float>, ext: UnsafeMutablePointer<Float>, shift: UnsafeMutablePointer<Float>
    let bsum: UnsafeMutablePointer<Float>, bsumsq: UnsafeMutablePointer<Float>
    let head: UnsafeMutablePointer<UInt32>, ringCount: UnsafeMutablePointer<UInt32>, sinceFit: UnsafeMutablePointer<UInt32>
    let ring: UnsafeMutablePointer<Float>, thrD: UnsafeMutablePointer<Double>
    let extremesTotal: UnsafeMutablePointer<UInt64>, blockExtremes: UnsafeMutablePointer<UInt16>
    let isDue: UnsafeMutablePointer<Bool>, inQueue: UnsafeMutablePointer<Bool>, queue: UnsafeMutablePointer<Int32>
    let extremeOut: UnsafeMutablePointer<Int32>
    // packed variant: (head:UInt16, count:UInt16, sinceFit:UInt32, thrD: Double) per filter
    struct PeakState { var head: UInt16; var count: UInt16; var since: UInt32; var t: Double }
    let packed: UnsafeMutablePointer<PeakState>
    let inbox: UnsafeMutablePointer<SIMD4<Float>>
    let peakList: UnsafeMutablePointer<Int32>         // K + 8 entries
    // Written once by the lazy initializer, read-only afterwards.
    nonisolated(unsafe) static let laneTable: UnsafeMutablePointer<SIMD8<Int32>> = {
        let t = UnsafeMutablePointer<SIMD8<Int32>>.allocate(capacity: 256)
        for m in 0..<256 {
            var v = SIMD8<Int32>(repeating: 0); var n = 0
            for lane in 0..<8 where (m >> lane) & 1 != 0 { v[n] = Int32(lane); n += 1 }
            t[m] = v
        }
        return t
    }()
    var queueHead = 0, queueCount = 0, extremeCount = 0

    /// Thresholds from the quantile of `calibRows` pool rows, exactly as FilterBank (ext = +∞ would
    /// make every peak a non-extreme; instead ext = the 1 − 1e-4 quantile of the lognormal, ≈ the fitted z).
    init(pool: RowPool, level: Double, calibration: Int = 1000, maxPeaks: Int = 256, refitAfterPeaks: Int = 32) {
        k = pool.filters; cap = maxPeaks; refitAfter = UInt32(refitAfterPeaks)
        func col<T>(_ v: T, _ n: Int) -> UnsafeMutablePointer<T> { let p = UnsafeMutablePointer<T>.allocate(capacity: n); p.initialize(repeating: v, count: n); return p }
        thr = col(0, k); ext = col(0, k); shift = col(0, k); bsum = col(0, k); bsumsq = col(0, k)
        head = col(0, k); ringCount = col(0, k); sinceFit = col(0, k); ring = col(0, k * cap); thrD = col(0, k)
        extremesTotal = col(0, k); blockExtremes = col(0, k); isDue = col(false, k); inQueue = col(false, k); queue = col(0, k)
        extremeOut = col(0, k); packed = col(PeakState(head: 0, count: 0, since: 0, t: 0), k)
        inbox = col(SIMD4<Float>(), k)
        peakList = col(0, k + 8)
        var colv = [Float](repeating: 0, count: calibration)
        for j in 0..<k {
            for r in 0..<calibration { colv[r] = pool.row(r)[j] }
            colv.sort()
            let pos = level * Double(calibration - 1); let lo = Int(pos); let hi = min(lo + 1, calibration - 1)
            let t = Double(colv[lo]) + (pos - Double(lo)) * (Double(colv[hi]) - Double(colv[lo]))
            var f = Float(t); if Double(f) > t { f = f.nextDown }
            thr[j] = f; thrD[j] = t; packed[j].t = t
            var sum = 0.0; for v in colv { sum += Double(v) }
            shift[j] = Float(sum / Double(calibration))
            ext[j] = colv[calibration - 1] * 1.5   // rarely exceeded: ~the fitted extreme threshold
        }
    }

    @inline(__always) func markDue(_ j: Int) {
        isDue[j] = true
        guard !inQueue[j] else { return }
        inQueue[j] = true
        var tail = queueHead + queueCount
        if tail >= k { tail -= k }
        queue[tail] = Int32(j)
        queueCount += 1
    }
    /// The refit queue pop without the fit itself (the fit is measured separately).
    @inline(__always) func popDue() {
        guard queueCount > 0 else { return }
        let j = Int(queue[queueHead]); queueHead += 1; if queueHead == k { queueHead = 0 }
        queueCount -= 1; inQueue[j] = false; isDue[j] = false; sinceFit[j] = 0; packed[j].since = 0
    }

    @inline(__always) func extreme(_ j: Int) -> Int {
        extremesTotal[j] &+= 1; blockExtremes[j] &+= 1
        extremeOut[extremeCount] = Int32(truncatingIfNeeded: j); extremeCount &+= 1
        return 0
    }

    @inline(__always) func exceedCurrent(_ j: Int, _ s: Float, extreme isExt: Bool, ringStore: Bool) -> Int {
        if isExt { return extreme(j) }
        let h = Int(head[j])
        if ringStore { ring[j &* cap &+ h] = Float(Double(s) - thrD[j]) } else { extremeOut[0] = Int32(bitPattern: Float(Double(s) - thrD[j]).bitPattern) }
        head[j] = h &+ 1 == cap ? 0 : UInt32(h &+ 1)
        if Int(ringCount[j]) < cap { ringCount[j] &+= 1 }
        let since = sinceFit[j] &+ 1
        sinceFit[j] = since
        if since == refitAfter { markDue(j) }
        return 1
    }

    @inline(__always) func exceedPacked(_ j: Int, _ s: Float, extreme isExt: Bool, floatExcess: Bool) -> Int {
        if isExt { return extreme(j) }
        var st = packed[j]
        let h = Int(st.head)
        ring[j &* cap &+ h] = floatExcess ? s - thr[j] : Float(Double(s) - st.t)
        st.head = h &+ 1 == cap ? 0 : UInt16(h &+ 1)
        if Int(st.count) < cap { st.count &+= 1 }
        st.since &+= 1
        packed[j] = st
        if st.since == refitAfter { markDue(j) }
        return 1
    }

    @inline(__always) func exceedInbox(_ j: Int, _ s: Float, extreme isExt: Bool, floatExcess: Bool) -> Int {
        if isExt { return extreme(j) }
        let h = Int(head[j])
        let x = floatExcess ? s - thr[j] : Float(Double(s) - thrD[j])
        let lane = h & 3
        inbox[j][lane] = x
        if lane == 3 {   // cap % 4 == 0, so the 4 slots are contiguous and 16-byte aligned
            UnsafeMutableRawPointer(ring + (j &* cap &+ h &- 3)).storeBytes(of: inbox[j], as: SIMD4<Float>.self)
        }
        head[j] = h &+ 1 == cap ? 0 : UInt32(h &+ 1)
        if Int(ringCount[j]) < cap { ringCount[j] &+= 1 }
        let since = sinceFit[j] &+ 1
        sinceFit[j] = since
        if since == refitAfter { markDue(j) }
        return 1
    }

    @inline(__always) static func mask(_ m: SIMDMask<SIMD8<Int32>>) -> UInt32 {
        // Branch-free bitmask of the 8 lanes (the compiler lowers this to vmovmskps on x86-64-v3).
        let bits = SIMD8<Int32>(1, 2, 4, 8, 16, 32, 64, 128)
        return UInt32(truncatingIfNeeded: (SIMD8<Int32>(repeating: 0).replacing(with: bits, where: m)).wrappedSum())
    }

    func scan(_ row: UnsafePointer<Float>, _ v: Variant) -> Int {
        extremeCount = 0
        var peaks = 0, i = 0
        let zero = SIMD8<Float>(repeating: 0)
        while i + 8 <= k {
            let s = UnsafeRawPointer(row + i).loadUnaligned(as: SIMD8<Float>.self)
            let t = UnsafeRawPointer(thr + i).loadUnaligned(as: SIMD8<Float>.self)
            let z = UnsafeRawPointer(ext + i).loadUnaligned(as: SIMD8<Float>.self)
            let sh = UnsafeRawPointer(shift + i).loadUnaligned(as: SIMD8<Float>.self)
            let isExt = s .> z
            let d = (s - sh).replacing(with: zero, where: isExt)
            let bs = UnsafeMutableRawPointer(bsum + i), bq = UnsafeMutableRawPointer(bsumsq + i)
            bs.storeBytes(of: bs.loadUnaligned(as: SIMD8<Float>.self) + d, as: SIMD8<Float>.self)
            bq.storeBytes(of: bq.loadUnaligned(as: SIMD8<Float>.self) + d * d, as: SIMD8<Float>.self)
            let isPeak = s .> t
            switch v {
            case .momentsOnly:
                // count only, so the comparison is not dead code
                peaks &+= Int(Self.mask(unsafeBitCast(isPeak, to: SIMDMask<SIMD8<Int32>>.self)).nonzeroBitCount)
            case .current, .noRing:
                if any(isPeak) {
                    for lane in 0..<8 where isPeak[lane] {
                        peaks &+= exceedCurrent(i + lane, s[lane], extreme: isExt[lane], ringStore: v == .current)
                    }
                }
            case .compactGuard:
                let m = Self.mask(unsafeBitCast(isPeak, to: SIMDMask<SIMD8<Int32>>.self))
                if m != 0 {
                    let idx = Self.laneTable[Int(m)] &+ SIMD8<Int32>(repeating: Int32(truncatingIfNeeded: i))
                    UnsafeMutableRawPointer(peakList + peaks).storeBytes(of: idx, as: SIMD8<Int32>.self)
                    peaks &+= m.nonzeroBitCount
                }
            case .compact, .compactPacked:
                let m = Self.mask(unsafeBitCast(isPeak, to: SIMDMask<SIMD8<Int32>>.self))
                let idx = Self.laneTable[Int(m)] &+ SIMD8<Int32>(repeating: Int32(truncatingIfNeeded: i))
                UnsafeMutableRawPointer(peakList + peaks).storeBytes(of: idx, as: SIMD8<Int32>.self)
                peaks &+= m.nonzeroBitCount
            case .bitmask, .packed, .packedFloatExcess, .inbox4, .inbox4Float:
                var m = Self.mask(unsafeBitCast(isPeak, to: SIMDMask<SIMD8<Int32>>.self))
                if m != 0 {
                    let e = Self.mask(unsafeBitCast(isExt, to: SIMDMask<SIMD8<Int32>>.self))
                    repeat {
                        let lane = m.trailingZeroBitCount
                        m &= m &- 1
                        let ex = (e >> UInt32(lane)) & 1 != 0
                        let sv = (row + i)[lane]
                        if v == .bitmask { peaks &+= exceedCurrent(i + lane, sv, extreme: ex, ringStore: true) }
                        else if v == .inbox4 || v == .inbox4Float { peaks &+= exceedInbox(i + lane, sv, extreme: ex, floatExcess: v == .inbox4Float) }
                        else { peaks &+= exceedPacked(i + lane, sv, extreme: ex, floatExcess: v == .packedFloatExcess) }
                    } while m != 0
                }
            }
            i += 8
        }
        precondition(i == k, "prototype assumes K % 8 == 0")
        if v == .compact || v == .compactGuard {
            let listed = peaks
            peaks = 0
            for p in 0..<listed {
                let j = Int(peakList[p])
                let sv = row[j]
                peaks &+= exceedCurrent(j, sv, extreme: sv > ext[j], ringStore: true)
            }
        } else if v == .compactPacked {
            let listed = peaks
            peaks = 0
            for p in 0..<listed {
                let j = Int(peakList[p])
                let sv = row[j]
                peaks &+= exceedPacked(j, sv, extreme: sv > ext[j], floatExcess: false)
            }
        }
        return peaks
    }
}
