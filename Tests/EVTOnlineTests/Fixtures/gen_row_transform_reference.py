#!/usr/bin/env python3
"""Generate Tests/EVTOnlineTests/Fixtures/row_transform_reference.json: golden data for the daemon's
common-mode-free row transforms (Sources/EVTOnline/RowTransform.swift; docs/statistics.md,
"Common-mode-free scorers") and the tail models the FilterBank applies to the transformed rows.

    python3 Tests/EVTOnlineTests/Fixtures/gen_row_transform_reference.py

Independent numpy/scipy implementation, float64, of the definitions (per row and layer l, n_l filters):
    m   = mean_l(s);  eps = max(0.01 * m, 2**-126)                   (per row: no calibration parameter)
    layer-logres  y_i = (s_i + eps) / exp(mean_l log(s_j + eps))     (log y = per-layer log-residual)
    layer-ratio   y_i = s_i / (m + eps)
Inputs are float32 (what the daemon receives); the transform is computed in float64 from them.

Tail models on the transformed reference rows (rounded to float32, as the bank stores them), per filter:
    z-score       mean, sd (ddof = 1); z = (y - mean) / sd
    POT upper     t = numpy.quantile(ref_y, 0.9) (linear); peaks ref_y[ref_y > t] - t;
                  scipy.stats.genpareto.fit(peaks, floc=0) -> shape, scale, log-likelihood;
                  for a new value v > t: score = -log10((N_t / n) * genpareto.sf(v - t, shape, scale=scale))
The generator also asserts the invariance: multiplying one layer of a row by any c > 0 leaves y unchanged
(to 1e-12 relative), which is the point of the transform.
"""
import json
import os
import warnings

import numpy as np
import scipy
from scipy import stats

SEED = 20261203
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "row_transform_reference.json")
WIDTHS = [1, 4, 6, 13, 24]          # a width-1 layer and widths that are not multiples of 8 (SIMD tails)
N_REF = 400
LEVEL = 0.9
TINY = float(np.finfo(np.float32).tiny)   # least normal float32, 2**-126


def slices():
    out, o = [], 0
    for w in WIDTHS:
        out.append(slice(o, o + w))
        o += w
    return out


def rows(rng, n):
    K = sum(WIDTHS)
    c = rng.gamma(1.5, 1.0, (n, 1))
    s = np.empty((n, K))
    for li, sl in enumerate(slices()):
        d = rng.gamma(3.0, 1.0 / 3.0, (n, 1))
        e = rng.gamma(2.0 + 0.5 * li, 0.01 * (li + 1), (n, sl.stop - sl.start))
        s[:, sl] = c * d * e
    return s


def transform(kind, s):
    s = np.asarray(s, np.float64)
    out = np.empty_like(s)
    for sl in slices():
        v = s[:, sl]
        m = v.mean(1, keepdims=True)
        eps = np.maximum(0.01 * m, TINY)
        if kind == "layer-logres":
            u = np.log(v + eps)
            out[:, sl] = np.exp(u - u.mean(1, keepdims=True))
        elif kind == "layer-ratio":
            out[:, sl] = v / (m + eps)
        else:
            raise ValueError(kind)
    return out


def main():
    rng = np.random.default_rng(SEED)
    K = sum(WIDTHS)
    ref = rows(rng, N_REF)
    ref[rng.random(ref.shape) < 0.03] = 0.0            # exact zeros: a closed ReLU
    ref = ref.astype(np.float32).astype(np.float64)
    new = rows(rng, 9)
    notes = ["typical", "layer 3 (filters 11-23) x50: pure common mode", "filter 15 (layer 3) x8",
             "whole row x1e-3", "layer 4 all zero", "filter 30 (layer 4) zeroed",
             "huge values (row scaled to max 1e37)", "tiny values (row scaled to max 1e-33)", "all zero"]
    new[1, 11:24] *= 50
    new[2, 15] *= 8
    new[3] *= 1e-3
    new[4, 24:48] = 0.0
    new[5, 30] = 0.0
    new[6] *= 1e37 / new[6].max()
    new[7] *= 1e-33 / new[7].max()
    new[8] = 0.0
    new = new.astype(np.float32).astype(np.float64)

    # The invariance the transform exists for (float64, exact up to rounding).
    for kind in ["layer-logres", "layer-ratio"]:
        base = transform(kind, ref[:50])
        scaled = ref[:50].copy()
        for li, sl in enumerate(slices()):
            scaled[:, sl] *= rng.uniform(1e-3, 1e3, (50, 1))
        assert np.allclose(transform(kind, scaled), base, rtol=1e-12, atol=0), kind

    out = {"generator": os.path.basename(__file__), "seed": SEED, "numpy": np.__version__, "scipy": scipy.__version__,
           "widths": WIDTHS, "level": LEVEL, "reference": ref.tolist(), "new_rows": new.tolist(), "new_row_notes": notes,
           "transforms": {}}
    for kind in ["layer-logres", "layer-ratio"]:
        ry = transform(kind, ref)
        ny = transform(kind, new)
        ry32 = ry.astype(np.float32).astype(np.float64)
        ny32 = ny.astype(np.float32).astype(np.float64)
        mu = ry32.mean(0)
        sd = ry32.std(0, ddof=1)
        filters = []
        for j in range(K):
            col = ry32[:, j]
            t = float(np.quantile(col, LEVEL))
            y = col[col > t] - t
            f = {"mean": float(mu[j]), "sd": float(sd[j]), "z": ((ny32[:, j] - mu[j]) / sd[j]).tolist() if sd[j] > 1e-6 else None,
                 "t": t, "nt": int(len(y)), "shape": None, "scale": None, "loglik": None, "score": None}
            if len(y) >= 10 and np.ptp(y) > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    g, _, sig = stats.genpareto.fit(y, floc=0)
                f["shape"], f["scale"] = float(g), float(sig)
                f["loglik"] = float(np.sum(stats.genpareto.logpdf(y, g, loc=0, scale=sig)))
                sc = []
                for v in ny32[:, j]:
                    if v > t:
                        p = (len(y) / N_REF) * stats.genpareto.sf(v - t, g, loc=0, scale=sig)
                        sc.append(float(-np.log10(p)) if p > 0 else None)
                    else:
                        sc.append(None)
                f["score"] = sc
            filters.append(f)
        out["transforms"][kind] = {"reference_y_first20": ry[:20].tolist(), "new_y": ny.tolist(), "filters": filters}
    with open(OUT, "w") as fh:
        json.dump(out, fh, separators=(",", ":"))
        fh.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB): K={K}, {N_REF} reference rows, {len(new)} new rows")


if __name__ == "__main__":
    main()
