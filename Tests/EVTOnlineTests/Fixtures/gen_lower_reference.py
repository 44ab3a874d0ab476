#!/usr/bin/env python3
"""Generate Tests/EVTOnlineTests/Fixtures/lower_reference.json, the numpy/scipy reference for the
FilterBank's lower tail (docs/statistics.md, "Two tails").

    python3 Tests/EVTOnlineTests/Fixtures/gen_lower_reference.py

Deterministic (one numpy Generator, fixed seed). Settings: level 0.9, q 2e-3, tails "both" (so the
lower tail's risk is q_l = q/2 = 1e-3), calibration 2,000 rows. Six filters, float32 values:
  0 exponential(1)            3 exponential with exactly one 0 (p0 = 5e-4 < q_l: zero mode "extreme")
  1 lognormal(0, 0.5)         4 exponential with 30 % zeros (p0 >= q_l: zero mode "watch")
  2 half-normal               5 gamma(3)
Per filter, computed here independently of the Swift code:
  zeros, p0 = zeros/n, zero mode, t_low = numpy.quantile(positive values, 1 - level),
  the peaks log(t_low/x) of the positive values below t_low (float32, arrival order), N_t, n_plus,
  scipy.stats.genpareto.fit(peaks, floc=0) and its log-likelihood,
  q_plus = (q_l - p0)/(1 - p0) (mode "extreme"), y_q = genpareto.isf(q_plus n_plus / N_t) at the
  scipy fit, z_low = t_low * exp(-y_q), and r* = ceil(log q_l / log((zeros + 1)/(n + 1)))
  (mode "watch").
"""
import json
import math
import os

import numpy as np
from scipy.stats import genpareto

SEED = 20261202
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lower_reference.json")
LEVEL, Q, N = 0.9, 2e-3, 2000


def columns(rng):
    cols = [
        rng.exponential(1.0, N),
        rng.lognormal(0.0, 0.5, N),
        np.abs(rng.normal(0.0, 1.0, N)),
        rng.exponential(1.0, N),
        rng.exponential(1.0, N) * (rng.uniform(size=N) >= 0.3),
        rng.gamma(3.0, 1.0, N),
    ]
    cols[3][1234] = 0.0
    return [c.astype(np.float32) for c in cols]


def reference(col):
    ql = Q / 2
    x = col.astype(np.float64)
    n = len(x)
    zeros = int(np.sum(x == 0))
    p0 = zeros / n
    mode = "off" if zeros == n else ("extreme" if p0 < ql else "watch")
    pos = x[x > 0]
    t = float(np.quantile(pos, 1 - LEVEL)) if len(pos) else 0.0
    peaks = np.array([np.float32(math.log(t / v)) for v in x if 0 < v < t], dtype=np.float32)
    nt, nplus = len(peaks), len(pos)
    shape, _, scale = genpareto.fit(peaks.astype(np.float64), floc=0)
    ll = float(np.sum(genpareto.logpdf(peaks.astype(np.float64), shape, loc=0, scale=scale)))
    out = {"zeros": zeros, "p0": p0, "mode": mode, "t_low": t, "nt": nt, "n_plus": nplus,
           "peaks": [float(v) for v in peaks],
           "scipy_shape": float(shape), "scipy_scale": float(scale), "scipy_loglik": ll,
           "z_low": 0.0, "r_star": None}
    if mode == "extreme":
        qplus = (ql - p0) / (1 - p0)
        y = float(genpareto.isf(qplus * nplus / nt, shape, loc=0, scale=scale))
        out["z_low"] = t * math.exp(-y)
        out["y_q"] = y
    if mode == "watch":
        out["r_star"] = int(math.ceil(math.log(ql) / math.log((zeros + 1) / (n + 1))))
    return out


def main():
    rng = np.random.default_rng(SEED)
    cols = columns(rng)
    doc = {"level": LEVEL, "q": Q, "calibration": N, "tails": "both",
           "columns": [[float(v) for v in c] for c in cols],
           "filters": [reference(c) for c in cols]}
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
