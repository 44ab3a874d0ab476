"""Common-mode-free scorers (issue 13): remove what a row shares, then apply a tail model.

A saliency row s (K filters, grouped in layers) is dominated by what every filter shares: its overall
size tracks the prediction's confidence (Spearman -0.98) and filters of one layer move together. The
transforms below map a row s to x (same shape) so that the shared part is gone; a tail model is then
fitted per filter on the transformed REFERENCE rows and applied to transformed new rows.

Transforms (l = layer(i), n_l = its filter count; eps_l, a_i, b_i, mu_l, v_l are learned at calibration):
  raw           x_i = s_i
  row/mean      x_i = s_i / mean_j s_j                                          (c; method.md §7)
  layer ratio   x_i = s_i / (mean_{j in l} s_j + eps_l)                         (a)
  layer logres  x_i = log(s_i + eps_l) - mean_{j in l} log(s_j + eps_l)         (b)
  factor        u_i = log(s_i + eps_l); f_l = mean_{j in l} u_j;
                x_i = u_i - (a_i + b_i f_l)   (a_i, b_i: OLS of u_i on f_l over the reference)   (d)
  factor-PC     u as above; c = u_l - mu_l (mu_l = reference mean of u over rows, per filter);
                f = v_l . c (v_l = first principal direction of the reference's c, unit norm);
                x_i = c_i - v_i f                                                (d, first-PC variant)
  layer rank    x_i = (rank of s_i among the layer's filters in that row, 1..n_l, ties averaged) / n_l  (e)
eps_l = 0.01 * median of the reference values of layer l (1e-12 if that is 0): it keeps log finite for
exactly-zero gradients (a closed ReLU) and bounds the leverage of tiny values.

Tail models on x (per filter, reference = transformed reference rows):
  z      (x - mean)/sd;  z-lower: -z;  z-two: |z|
  POT    common.POT (0.9 quantile threshold, genpareto.fit(floc=0)); POT-lower: POT on -x;
         POT-two: max(POT upper key, POT lower key) (= min of the two tail p-values).
"""
from __future__ import annotations

import numpy as np

from common import POT, ZScore

TRANSFORMS = ["raw", "row/mean", "layer ratio", "layer logres", "factor", "factor-PC", "layer rank"]
TAILS = ["z", "z-lower", "z-two", "POT", "POT-lower", "POT-two"]

# Operations per value of the transform alone, counted for a streaming implementation (one row at a time;
# a per-layer mean is one add per value plus one divide per layer). log = one call to log().
COST = {
    "raw": "0",
    "row/mean": "2 (1 add for the row mean, 1 multiply by its reciprocal)",
    "layer ratio": "2 (1 add for the layer mean, 1 multiply)",
    "layer logres": "1 log + 3 (add eps, add for the layer mean, subtract)",
    "factor": "1 log + 4 (add eps, add for the layer mean, 1 fused multiply-add a_i + b_i f, subtract); "
              "2 parameters per filter",
    "factor-PC": "1 log + 6 (add eps, subtract mu, 1 multiply-add for v.c, 1 multiply-add c - v f); "
                 "2 parameters per filter",
    "layer rank": "sort per layer: ~log2(n_l) comparisons per value (n_l = 2048 -> 11) + a scatter",
}


def layer_slices(layer):
    layer = np.asarray(layer)
    out = []
    for l in np.unique(layer):
        idx = np.flatnonzero(layer == l)
        assert np.all(np.diff(idx) == 1), "filters of a layer must be contiguous"
        out.append(slice(idx[0], idx[-1] + 1))
    return out


class Transform:
    """Fitted on reference rows [n, K]; apply(rows) -> transformed rows [m, K] (float64)."""

    def __init__(self, kind, ref, layer):
        assert kind in TRANSFORMS, kind
        self.kind = kind
        self.slices = layer_slices(layer)
        ref = np.asarray(ref, np.float64)
        self.eps = np.empty(ref.shape[1])
        for sl in self.slices:
            med = float(np.median(ref[:, sl]))
            self.eps[sl] = 0.01 * med if med > 0 else 1e-12
        if kind == "factor":
            u = np.log(ref + self.eps)
            f = self._layer_mean(u)                       # [n, K], the layer's factor broadcast per filter
            fc = f - f.mean(0)
            uc = u - u.mean(0)
            var = (fc * fc).sum(0)
            self.b = np.where(var > 0, (fc * uc).sum(0) / np.where(var > 0, var, 1.0), 0.0)
            self.a = u.mean(0) - self.b * f.mean(0)
        if kind == "factor-PC":
            u = np.log(ref + self.eps)
            self.mu = u.mean(0)
            self.v = np.zeros(ref.shape[1])
            for sl in self.slices:
                c = u[:, sl] - self.mu[sl]
                _, _, vt = np.linalg.svd(c, full_matrices=False)
                v = vt[0]
                self.v[sl] = v if v.sum() >= 0 else -v

    def _layer_mean(self, x):
        out = np.empty_like(x)
        for sl in self.slices:
            out[:, sl] = x[:, sl].mean(1, keepdims=True)
        return out

    def apply(self, rows):
        s = np.asarray(rows, np.float64)
        k = self.kind
        if k == "raw":
            return s.copy()
        if k == "row/mean":
            m = s.mean(1, keepdims=True)
            return s / np.where(m > 0, m, 1.0)
        if k == "layer ratio":
            return s / (self._layer_mean(s) + self.eps)
        u = np.log(s + self.eps)
        if k == "layer logres":
            return u - self._layer_mean(u)
        if k == "factor":
            return u - (self.a + self.b * self._layer_mean(u))
        if k == "factor-PC":
            c = u - self.mu
            out = np.empty_like(c)
            for sl in self.slices:
                f = c[:, sl] @ self.v[sl]
                out[:, sl] = c[:, sl] - f[:, None] * self.v[sl]
            return out
        if k == "layer rank":
            from scipy.stats import rankdata
            out = np.empty_like(s)
            for sl in self.slices:
                n = sl.stop - sl.start
                out[:, sl] = rankdata(s[:, sl], axis=1) / n
            return out
        raise ValueError(k)


class Scorer:
    """transform + tail model. rank_keys(rows): higher = more salient, [rows, K]."""

    def __init__(self, transform, tail, ref_x):
        self.tr, self.tail = transform, tail
        self.name = f"{tail} | {transform.kind}"
        if tail.startswith("z"):
            self.z = ZScore(ref_x)
        if tail in ("POT", "POT-two"):
            self.up = POT(ref_x)
        if tail in ("POT-lower", "POT-two"):
            self.lo = POT(-ref_x)

    def keys_x(self, x):
        t = self.tail
        if t == "z":
            return self.z.rank_keys(x)
        if t == "z-lower":
            return -self.z.rank_keys(x)
        if t == "z-two":
            return np.abs(self.z.rank_keys(x))
        if t == "POT":
            return _finite(self.up.rank_keys(x))
        if t == "POT-lower":
            return _finite(self.lo.rank_keys(-x))
        if t == "POT-two":
            return np.maximum(_finite(self.up.rank_keys(x)), _finite(self.lo.rank_keys(-x)))
        raise ValueError(t)

    def rank_keys(self, rows):
        return self.keys_x(self.tr.apply(rows))


def _finite(k):
    return np.nan_to_num(k, posinf=1e12) if not np.all(np.isfinite(k)) else k


def build(ref, layer, transforms=TRANSFORMS, tails=TAILS):
    """All transform x tail scorers fitted on `ref`. Returns list of Scorer (shares fits per transform)."""
    out = []
    for kind in transforms:
        tr = Transform(kind, ref, layer)
        x = tr.apply(ref)
        z = ZScore(x) if any(t.startswith("z") for t in tails) else None
        up = POT(x) if any(t in ("POT", "POT-two") for t in tails) else None
        lo = POT(-x) if any(t in ("POT-lower", "POT-two") for t in tails) else None
        for t in tails:
            sc = Scorer.__new__(Scorer)
            sc.tr, sc.tail, sc.name = tr, t, f"{t} | {kind}"
            sc.z, sc.up, sc.lo = z, up, lo
            out.append(sc)
    return out
