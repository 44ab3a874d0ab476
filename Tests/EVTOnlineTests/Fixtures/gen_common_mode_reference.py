#!/usr/bin/env python3
"""Generate Tests/EVTOnlineTests/Fixtures/common_mode_reference.json, golden data for the common-mode-free
transforms of issue 13 (docs/results.md "Common-mode-free scorers"; reference implementation
experiments/scorers.py) and the tail scores applied to the transformed values.

    python3 Tests/EVTOnlineTests/Fixtures/gen_common_mode_reference.py

Deterministic (one numpy Generator, fixed seed). Synthetic rows with layer structure: 3 layers of 4, 6 and 8
filters (K = 18, contiguous), 300 reference rows and 8 new rows. Every row is
    s_ij = c_i * d_{i,layer(j)} * e_ij     (row factor c, row-and-layer factor d, filter noise e; all gamma)
with some exact zeros (a closed ReLU) in the reference and a few planted new rows (a filter 8x up, a filter
zeroed, a whole layer zero, a row 100x larger overall = pure common mode).

Transforms (l = layer(j), n_l = its filter count):
  layer_logres  eps_l = 0.01 * numpy.median(all reference values of layer l)  (1e-12 if that median <= 0)
                u_j = log(s_j + eps_l);  x_j = u_j - mean_{k in l} u_k
  layer_ratio   x_j = s_j / (mean_{k in l} s_k + eps_l)   (same eps_l)

Tail models, per filter, fitted on the TRANSFORMED reference rows (as experiments/common.py):
  zscore        mean, sd (ddof = 1; sd < 1e-14 -> 1); z = (x - mean) / sd
  pot_upper     t = numpy.quantile(ref_x, 0.9) (linear), peaks y = ref_x[ref_x > t] - t, nt = len(y);
                fitted iff nt >= 10 and ptp(y) > 0: (gamma, sigma) = scipy.stats.genpareto.fit(y, floc=0).
                For a new value v: above = fitted and v > t;
                  above: p = (nt/n) * genpareto.sf(v - t, gamma, scale=sigma)
                  else : p = max(#{ref_x >= v}, 0.5) / n    (empirical tail)
                score = -log10 p  (+inf when p = 0 beyond a finite GPD endpoint; stored as null)
  pot_lower     the same on -x (reference and new values negated)
  two_sided     score = max(pot_upper score, pot_lower score); z_two = |z|
"""
import json
import os
import warnings

import numpy as np
import scipy
from scipy import stats

SEED = 20261202
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "common_mode_reference.json")
WIDTHS = [4, 6, 8]
N_REF = 300
LEVEL = 0.9
MIN_PEAKS = 10


def layer_slices():
    out, o = [], 0
    for w in WIDTHS:
        out.append(slice(o, o + w))
        o += w
    return out


def rows(rng, n):
    K = sum(WIDTHS)
    c = rng.gamma(1.5, 1.0, (n, 1))
    s = np.empty((n, K))
    for li, sl in enumerate(layer_slices()):
        d = rng.gamma(3.0, 1.0 / 3.0, (n, 1))
        e = rng.gamma(2.0 + li, 0.01 * (li + 1), (n, sl.stop - sl.start))
        s[:, sl] = c * d * e
    return s


def eps_of(ref):
    eps = np.empty(ref.shape[1])
    for sl in layer_slices():
        med = float(np.median(ref[:, sl]))
        eps[sl] = 0.01 * med if med > 0 else 1e-12
    return eps


def transform(kind, s, eps):
    out = np.empty_like(s)
    for sl in layer_slices():
        if kind == "layer_logres":
            u = np.log(s[:, sl] + eps[sl])
            out[:, sl] = u - u.mean(1, keepdims=True)
        elif kind == "layer_ratio":
            out[:, sl] = s[:, sl] / (s[:, sl].mean(1, keepdims=True) + eps[sl])
        else:
            raise ValueError(kind)
    return out


def pot_fit(ref_x):
    n, K = ref_x.shape
    fits = []
    for j in range(K):
        t = float(np.quantile(ref_x[:, j], LEVEL))
        y = ref_x[:, j][ref_x[:, j] > t] - t
        fitted = len(y) >= MIN_PEAKS and np.ptp(y) > 0
        g, sig = 0.0, 1.0
        if fitted:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g, _, sig = stats.genpareto.fit(y, floc=0)
        fits.append({"t": t, "nt": int(len(y)), "fitted": bool(fitted), "gamma": float(g), "sigma": float(sig)})
    return fits


def pot_score(fits, ref_x, x):
    n = ref_x.shape[0]
    score = np.empty_like(x)
    above = np.zeros(x.shape, bool)
    for j, f in enumerate(fits):
        srt = np.sort(ref_x[:, j])
        for i, v in enumerate(x[:, j]):
            if f["fitted"] and v > f["t"]:
                above[i, j] = True
                p = (f["nt"] / n) * stats.genpareto.sf(v - f["t"], f["gamma"], loc=0, scale=f["sigma"])
            else:
                ge = n - np.searchsorted(srt, v, side="left")
                p = max(ge, 0.5) / n
            with np.errstate(divide="ignore"):
                score[i, j] = -np.log10(p)
    return score, above


def js(a):
    """JSON-safe nested lists (inf -> None)."""
    a = np.asarray(a, dtype=np.float64)
    return [[None if not np.isfinite(v) else float(v) for v in r] for r in a] if a.ndim == 2 else \
        [None if not np.isfinite(v) else float(v) for v in a]


def main():
    rng = np.random.default_rng(SEED)
    K = sum(WIDTHS)
    ref = rows(rng, N_REF)
    zero_mask = rng.random(ref.shape) < 0.03          # exact zeros: a closed ReLU gives gradient 0
    ref[zero_mask] = 0.0
    new = rows(rng, 8)
    notes = ["typical", "typical", "filter 2 (layer 0) x8", "filter 9 (layer 1) zeroed",
             "layer 2 all zero", "whole row x100 (pure common mode)", "filter 17 (layer 2) x8 and row x0.1",
             "all zero"]
    new[2, 2] *= 8
    new[3, 9] = 0.0
    new[4, 10:18] = 0.0
    new[5] *= 100
    new[6] *= 0.1
    new[6, 17] *= 8
    new[7] = 0.0
    eps = eps_of(ref)
    out = {"generator": os.path.basename(__file__), "seed": SEED, "numpy": np.__version__, "scipy": scipy.__version__,
           "layers": [{"name": f"layer{i}", "filters": w} for i, w in enumerate(WIDTHS)],
           "level": LEVEL, "min_peaks": MIN_PEAKS,
           "reference": js(ref), "new_rows": js(new), "new_row_notes": notes, "transforms": {}}
    for kind in ["layer_logres", "layer_ratio"]:
        rx, nx = transform(kind, ref, eps), transform(kind, new, eps)
        mu = rx.mean(0)
        sd = rx.std(0, ddof=1)
        sd = np.where(sd < 1e-14, 1.0, sd)
        z = (nx - mu) / sd
        up = pot_fit(rx)
        lo = pot_fit(-rx)
        su, au = pot_score(up, rx, nx)
        sl_, al = pot_score(lo, -rx, -nx)
        out["transforms"][kind] = {
            "eps": js(eps), "new_x": js(nx),
            "zscore": {"mean": js(mu), "sd": js(sd), "z": js(z), "z_two": js(np.abs(z))},
            "pot_upper": {"fits": up, "score": js(su), "above": au.tolist()},
            "pot_lower": {"fits": lo, "score": js(sl_), "above": al.tolist()},
            "two_sided_score": js(np.maximum(su, sl_)),
        }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT) / 1024:.0f} KiB): K={K}, {N_REF} reference rows, {len(new)} new rows")


if __name__ == "__main__":
    main()
