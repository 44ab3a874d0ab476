"""Shared pieces of the experiments: loading the bundled feed and batch (non-streaming) scorers.

POT (Wang & Sato 2023, docs/method.md §2) per filter: threshold t = the reference's 0.9 quantile, peaks
Y = {s - t : s > t}, GPD fitted by scipy.stats.genpareto.fit(Y, floc=0), p = (Nt/n) * sf(s - t);
score = -log10 p. A filter above its threshold outranks every filter below its own; below-threshold
filters are ordered by the empirical tail p = #{ref >= s}/n. Filters with fewer than MIN_PEAKS
peaks use the empirical tail everywhere (p floored at 0.5/n above the reference maximum).
z-score (Levin et al. 2022): (s - mean)/sd over the reference, sd < 1e-14 -> 1.
"""
from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.join(ROOT, "data"))   # train_fmnist, record_feed (the model and its recorded feed)
FEED_DIR = os.path.join(ROOT, "data", "feeds", "fmnist")
FIG_DIR = os.path.join(ROOT, "docs", "results")
MIN_PEAKS = 10

from saliency_tap import load_feed  # noqa: E402


def feed(name):
    return load_feed(os.path.join(FEED_DIR, name))


def layer_of_filter(schema):
    """int array [K]: layer index of each global filter."""
    return np.concatenate([np.full(l["filters"], i) for i, l in enumerate(schema["layers"])])


class ZScore:
    name = "z-score"

    def __init__(self, ref):
        self.mu = ref.mean(0)
        sd = ref.std(0, ddof=1)
        self.sd = np.where(sd < 1e-14, 1.0, sd)

    def rank_keys(self, rows):
        """Higher = more salient. Returns [rows, K]."""
        return (rows - self.mu) / self.sd


class POT:
    name = "POT"

    def __init__(self, ref, level=0.9):
        ref = np.asarray(ref, dtype=np.float64)
        self.n = ref.shape[0]
        self.t = np.quantile(ref, level, axis=0)
        self.sorted_ref = np.sort(ref, axis=0)
        K = ref.shape[1]
        self.gamma = np.zeros(K)
        self.sigma = np.ones(K)
        self.nt = np.zeros(K, dtype=int)
        self.fitted = np.zeros(K, dtype=bool)
        for j in range(K):
            y = ref[:, j][ref[:, j] > self.t[j]] - self.t[j]
            self.nt[j] = len(y)
            if len(y) >= MIN_PEAKS and np.ptp(y) > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    c, _, s = stats.genpareto.fit(y, floc=0)
                self.gamma[j], self.sigma[j], self.fitted[j] = c, s, True

    def _empirical_p(self, rows):
        p = np.empty_like(rows, dtype=np.float64)
        for j in range(rows.shape[1]):
            ge = self.n - np.searchsorted(self.sorted_ref[:, j], rows[:, j], side="left")
            p[:, j] = np.maximum(ge, 0.5) / self.n
        return p

    def scores(self, rows):
        """(-log10 p [rows, K], above-threshold mask [rows, K])."""
        rows = np.asarray(rows, dtype=np.float64)
        above = (rows > self.t) & self.fitted
        p = self._empirical_p(rows)
        ex = np.maximum(rows - self.t, 0.0)
        sf = stats.genpareto.sf(ex, self.gamma, loc=0, scale=self.sigma)
        p_gpd = (self.nt / self.n) * sf
        p = np.where(above, p_gpd, p)
        with np.errstate(divide="ignore"):
            return -np.log10(p), above

    def rank_keys(self, rows):
        s, above = self.scores(rows)
        # Above-threshold filters first (ordered by score; p = 0 beyond a finite endpoint -> +inf),
        # then below-threshold filters by the empirical tail. Scores are < 1e6 unless infinite.
        return np.where(above, 1e6 + s, np.minimum(s, 1e6 - 1))


class RowNormalised:
    """Wraps a scorer; every row (reference and new) is divided by its own mean first (docs/method.md §7)."""

    def __init__(self, cls, ref, **kw):
        self.inner = cls(ref / ref.mean(1, keepdims=True), **kw)
        self.name = cls.name + " (row/mean)"

    def rank_keys(self, rows):
        return self.inner.rank_keys(rows / rows.mean(1, keepdims=True))


def ranks_of(keys, filters):
    """1-based rank of each filter in `filters` within each row of keys (largest first, ties pessimistic)."""
    out = np.empty((keys.shape[0], len(filters)), dtype=int)
    for i, f in enumerate(filters):
        out[:, i] = 1 + (keys > keys[:, [f]]).sum(1) + (keys == keys[:, [f]]).sum(1) - 1
    return out


def top_k(keys, k):
    return np.argsort(-keys, axis=1, kind="stable")[:, :k]


def save_fig(fig, name):
    os.makedirs(FIG_DIR, exist_ok=True)
    path = os.path.join(FIG_DIR, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)")
    return path


def load_json(path):
    with open(path) as f:
        return json.load(f)


class LowerTail:
    """Wraps a scorer to score the LOWER tail: a filter is salient when its saliency is unusually small
    (the scorer is fitted on -ref and applied to -rows). Not part of the method; a diagnostic."""

    def __init__(self, cls, ref, **kw):
        self.inner = cls(-np.asarray(ref, dtype=np.float64), **kw)
        self.name = cls.name + " (lower tail)"

    def rank_keys(self, rows):
        return self.inner.rank_keys(-np.asarray(rows, dtype=np.float64))
