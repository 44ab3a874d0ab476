#!/usr/bin/env python3
"""Vectorized numpy baselines for one prediction row of K filters (method spec's reference points).

1. `moments`: Welford update of (n, mean, M2) for every filter plus the exceedance check
   `x > t` (count of peaks) — what a numpy-only monitor does per row, no tails, no rings.
2. `pot_score`: score every filter's POT tail probability for the row:
   p = (Nt/n) * (1 + gamma (x - t)/sigma)^(-1/gamma) above t, the empirical rate below;
   score = -log10 p.

Data: seeded lognormal family of `saliencyctl bench` (scale_j ~ U(0.5,1.5), exp(0.6 N)), float32
rows from a pool of 64; thresholds from 1000 calibration rows; GPD parameters fixed (gamma = 0.1,
sigma = scale_j * 0.5) since only the arithmetic cost matters here.

Usage: Benchmarks/drivers/bench_numpy.py [--filters K ...] [--seconds S]
"""
import argparse, time

import numpy as np


def pool(k, rows, seed=1):
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.5, 1.5, size=k)
    return (scales[None, :] * np.exp(0.6 * rng.standard_normal((rows, k)))).astype(np.float32), scales


def bench(fn, rows, seconds):
    n = 0
    t0 = time.perf_counter()
    while True:
        for r in rows:
            fn(r)
        n += len(rows)
        el = time.perf_counter() - t0
        if el >= seconds:
            return n / el


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filters", type=int, nargs="+", default=[26560, 4800])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--level", type=float, default=0.90)
    a = ap.parse_args()
    print(f"numpy {np.__version__}")
    for k in a.filters:
        cal, scales = pool(k, 1000)
        rows = list(pool(k, 64, seed=2)[0])
        t = np.quantile(cal, a.level, axis=0).astype(np.float64)
        n = np.full(k, 1000.0)
        mean = cal.mean(axis=0, dtype=np.float64)
        m2 = cal.var(axis=0, dtype=np.float64) * 1000
        nt = np.full(k, 100.0)
        peaks = [0]

        def moments(x):
            nonlocal n, mean, m2
            xd = x.astype(np.float64)
            n += 1.0
            d = xd - mean
            mean += d / n
            m2 += d * (xd - mean)
            peaks[0] += int(np.count_nonzero(xd > t))

        gamma = np.full(k, 0.1)
        sigma = scales * 0.5
        out = np.empty(k)

        def pot_score(x):
            xd = x.astype(np.float64)
            rate = nt / n
            above = xd > t
            y = np.where(above, xd - t, 0.0)
            p = rate * np.power(1.0 + gamma * y / sigma, -1.0 / gamma)
            p = np.where(above, p, np.maximum(rate, 1.0 - a.level))
            np.negative(np.log10(p, out=out), out=out)
            return out

        rm = bench(moments, rows, a.seconds)
        rp = bench(pot_score, rows, a.seconds)
        print(f"K={k}: moments+exceedance {rm:,.0f} rows/s ({rm * k / 1e6:,.0f} M values/s); "
              f"POT score every filter {rp:,.0f} rows/s ({rp * k / 1e6:,.0f} M values/s)", flush=True)


if __name__ == "__main__":
    main()
