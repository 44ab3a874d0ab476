#!/usr/bin/env python3
"""Reference values for saliencyd's alert rule (docs/alerting.md).

Writes Tests/EVTOnlineTests/Fixtures/alert_reference.json with log P(Binomial(n, p) >= k)
for fixed edge cases and seeded random cases (q down to 1e-7, n up to 10,000), computed by
scipy.stats.binom.logsf (Boost's regularized incomplete beta) and cross-checked against an
exact 60-digit mpmath sum of pmf terms. The Swift test compares its log-space tail to these
values to 1e-9 relative in probability (= 1e-9 absolute in the log).

Usage:  python3 Tests/EVTOnlineTests/Fixtures/gen_alert_reference.py            # rewrite the fixture
        python3 Tests/EVTOnlineTests/Fixtures/gen_alert_reference.py --check    # verify only, write nothing
"""
import json
import os
import sys

import mpmath
import numpy as np
from scipy.stats import binom

SEED = 20240611
mpmath.mp.dps = 60


def exact_log_sf(n: int, p: float, k: int) -> float:
    """log P(X >= k) by an exact high-precision sum (the smaller side, then complement)."""
    if k <= 0:
        return 0.0
    if k > n:
        return float("-inf")
    P = mpmath.mpf(p)
    Q = 1 - P

    def pmf(j):
        return mpmath.binomial(n, j) * P**j * Q ** (n - j)

    if k > n * p:  # upper tail is the small side
        s = mpmath.fsum(pmf(j) for j in range(k, n + 1))
    else:
        s = 1 - mpmath.fsum(pmf(j) for j in range(0, k))
    return float(mpmath.log(s))


def main() -> None:
    rng = np.random.default_rng(SEED)
    cases = [
        (1, 1e-7, 1), (10, 1e-7, 1), (10_000, 1e-7, 1), (10_000, 1e-7, 2), (10_000, 1e-7, 5),
        (10_000, 1e-7, 32), (9_999, 2e-4, 2), (300, 2e-4, 2), (1_000, 1e-3, 0), (1_000, 1e-3, 1_000),
        (1_000, 1e-3, 1), (1_000, 1e-3, 3), (1_000, 1e-3, 10), (10_000, 1e-3, 10), (10_000, 1e-3, 5),
        (10_000, 1e-3, 11), (10_000, 1e-3, 30), (100, 0.3, 3), (100, 0.3, 30), (100, 0.3, 31),
        (100, 0.3, 60), (50, 0.5, 25), (50, 0.5, 26), (10_000, 0.1, 1_000), (10_000, 0.1, 1_100),
        (10_000, 0.5, 5_000), (10_000, 0.5, 5_200), (123, 1e-4, 4), (5_000, 1e-5, 3), (2, 0.999, 2),
    ]
    for _ in range(120):
        n = int(np.exp(rng.uniform(0, np.log(10_000))))
        p = float(10 ** rng.uniform(-7, np.log10(0.6)))
        mean = n * p
        kind = rng.integers(0, 3)
        if kind == 0:
            k = int(rng.integers(1, min(n, 40) + 1))
        elif kind == 1:
            k = int(min(n, max(1, round(mean + rng.normal(0, 1) * np.sqrt(mean * (1 - p) + 1)))))
        else:
            k = int(min(n, max(1, np.ceil(mean) + rng.integers(0, 30))))
        cases.append((n, p, k))

    out = []
    worst = 0.0
    for n, p, k in cases:
        ref = float(binom.logsf(k - 1, n, p))
        ex = exact_log_sf(n, p, k)
        if np.isfinite(ex) and np.isfinite(ref):
            # scipy and the exact sum must agree before either becomes a reference.
            d = abs(ref - ex)
            worst = max(worst, d)
            assert d < 1e-10, (n, p, k, ref, ex)
        elif np.isfinite(ex):
            assert ex < -700, (n, p, k, ref, ex)  # scipy's sf underflows below ~1e-308
        else:
            assert ref == float("-inf"), (n, p, k, ref)
        out.append({"n": n, "p": p, "k": k,
                    "log_sf": ex if np.isfinite(ex) else None,
                    "scipy_log_sf": ref if np.isfinite(ref) else None})

    doc = {
        "generator": "Tests/EVTOnlineTests/Fixtures/gen_alert_reference.py",
        "seed": SEED,
        "meaning": "log_sf = log P(Binomial(n, p) >= k); exact 60-digit sum; scipy_log_sf = scipy.stats.binom.logsf(k-1, n, p); null = -inf",
        "scipy_vs_exact_max_abs_log_diff": worst,
        "cases": out,
    }
    print(f"{len(out)} cases; max |scipy - exact| in log = {worst:.3e}", file=sys.stderr)
    if "--check" in sys.argv:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "alert_reference.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(path)}", file=sys.stderr)


if __name__ == "__main__":
    main()
