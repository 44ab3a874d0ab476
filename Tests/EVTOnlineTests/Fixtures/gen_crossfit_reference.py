#!/usr/bin/env python3
"""Generate Tests/EVTOnlineTests/Fixtures/crossfit_reference.json, the numpy/scipy reference for the
model-level rule's cross-fitted null sample (FilterBank.crossFitHistogram, docs/alerting.md §4).

    python3 Tests/EVTOnlineTests/Fixtures/gen_crossfit_reference.py [--check]

Deterministic (numpy Generator, fixed seeds). N = 1,000 calibration rows of K = 6 float32 filters:
filters 0-3 lognormal with a shared row factor (exp(0.7 f + 0.7 e_j), correlated), 4 exponential(1),
5 gamma(3). Settings: level 0.9, q 0.01, refits_per_row 0 (so a fold's tail models stay as fitted
while it counts: the reference needs no streaming refits), tails "upper" and "both".

Computed here independently of the Swift code, per fold (fit on the first half A = rows 0..499,
count the second half B; then fit on B, count A), per filter:
  upper: t = numpy.quantile(fit half, level), peaks float32(x - t) for x > t, N_t,
         scipy.stats.genpareto.fit(peaks, floc=0), z = t + scale*expm1(-shape*log(q_u n/N_t))/shape
         (q_u = q, or q/2 with tails "both"); a counted value x is extreme iff x > z;
  lower (tails "both"): t_low = numpy.quantile(fit half, 1 - level), peaks float32(log(t_low/x)) for
         x < t_low, y = genpareto isf form at q_l = q/2, z_low = t_low*exp(-y); x extreme iff x < z_low.
Each counted row's number of extremes (upper + lower) goes into a histogram of 8 bins (last: >= 7).
The seed is the first one from SEED on whose counted values all lie at least 1e-3 (relative) away
from their fold's z, so a tiny difference between scipy's fit and the Grimshaw fit cannot flip one.
"""
import json
import math
import os
import sys

import numpy as np
from scipy.stats import genpareto

SEED = 20261213
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crossfit_reference.json")
LEVEL, Q, N, K, BINS = 0.9, 0.01, 1000, 6, 8
MARGIN = 1e-3


def rows(rng):
    f = rng.normal(size=N)
    cols = [np.exp(0.7 * f + 0.7 * rng.normal(size=N)) for _ in range(4)]
    cols.append(rng.exponential(1.0, N))
    cols.append(rng.gamma(3.0, 1.0, N))
    return np.stack(cols, axis=1).astype(np.float32)


def z_upper(col, q):
    x = col.astype(np.float64)
    t = float(np.quantile(x, LEVEL))
    peaks = np.array([np.float32(v - t) for v in x if v > t], dtype=np.float32).astype(np.float64)
    shape, _, scale = genpareto.fit(peaks, floc=0)
    log_r = math.log(q * len(x) / len(peaks))
    return t + scale * math.expm1(-shape * log_r) / shape


def z_lower(col, q):
    x = col.astype(np.float64)
    t = float(np.quantile(x, 1 - LEVEL))
    peaks = np.array([np.float32(math.log(t / v)) for v in x if v < t], dtype=np.float32).astype(np.float64)
    shape, _, scale = genpareto.fit(peaks, floc=0)
    log_r = math.log(q * len(x) / len(peaks))
    y = scale * math.expm1(-shape * log_r) / shape
    return t * math.exp(-y) if y >= 0 else t


def histogram(data, tails):
    q_u = Q / 2 if tails == "both" else Q
    half = N // 2
    hist = [0] * BINS
    closest = math.inf
    for fit, count in [(slice(0, half), slice(half, N)), (slice(half, N), slice(0, half))]:
        a, b = data[fit].astype(np.float64), data[count].astype(np.float64)
        extremes = np.zeros(len(b), dtype=int)
        for j in range(K):
            zu = z_upper(data[fit][:, j], q_u)
            extremes += b[:, j] > zu
            closest = min(closest, float(np.min(np.abs(b[:, j] - zu))) / abs(zu))
            if tails == "both":
                zl = z_lower(data[fit][:, j], Q / 2)
                extremes += b[:, j] < zl
                closest = min(closest, float(np.min(np.abs(b[:, j] - zl))) / abs(zl))
        for e in extremes:
            hist[min(int(e), BINS - 1)] += 1
    return hist, closest


def build():
    seed = SEED
    while True:
        data = rows(np.random.default_rng(seed))
        cases, ok = [], True
        for tails in ["upper", "both"]:
            hist, closest = histogram(data, tails)
            ok = ok and closest >= MARGIN
            cases.append({"tails": tails, "histogram": hist, "closest_relative": closest})
        if ok:
            return {"seed": seed, "level": LEVEL, "q": Q, "rows": N, "filters": K, "bins": BINS,
                    "values": [float(v) for v in data.reshape(-1)], "cases": cases}
        seed += 1


def main():
    ref = build()
    text = json.dumps(ref, indent=1) + "\n"
    if "--check" in sys.argv:
        with open(OUT) as f:
            sys.exit(0 if f.read() == text else "crossfit_reference.json is stale: rerun gen_crossfit_reference.py")
    with open(OUT, "w") as f:
        f.write(text)
    print("seed", ref["seed"], [(c["tails"], c["histogram"], round(c["closest_relative"], 5)) for c in ref["cases"]])


if __name__ == "__main__":
    main()
