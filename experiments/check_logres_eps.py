#!/usr/bin/env python3
"""Does the daemon's definition of the common-mode-free scorers localize as well as E's? (issue 13, item 2)

    python3 experiments/check_logres_eps.py          # needs the rows cached by experiments/cm_rows.py

E's reference scorers (experiments/scorers.py, docs/results.md) use a CALIBRATION-time epsilon per layer,
eps_l = 0.01 * median of the layer's reference values, and put the tail models on x = log-residual. The daemon
(Sources/EVTOnline/RowTransform.swift) cannot know eps_l before the bank sees its first transformed row, and its
FilterBank models positive values (its lower tail is multiplicative). So it uses
    eps_{row,l} = max(0.01 * mean_l(s), 2**-126)     per row and layer: exactly invariant to s -> c*s on a layer
    y = exp(x) = (s + eps) / geometric mean_l(s + eps) the bank's row: upper tail POT and z-score on y,
                                                    lower tail POT on log(t/y) = additive on x (= E's POT on -x)
and, for the ratio, y = s / (mean_l(s) + eps_{row,l}).
This script runs E's own evaluation (common_mode.ranks/metrics/boot, E's rows, E's carrying sets and faults; E's
files are imported, not edited) on four variants and prints them beside E's stored results (docs/results/cm_*.json):
    E          E's layer logres (calibration eps), tails on x       (recomputed: must equal E's stored numbers)
    rowEps-x   per-row eps, tails on x                              (isolates the epsilon change)
    daemon     per-row eps, upper/z on y = exp(x), lower on -x      (what saliencyd computes)
    ratio      per-row eps layer ratio, upper/z on y                (saliencyd's layer-ratio)
Tails: z, POT (upper), POT-two (max of upper and lower -log10 p; the daemon's tails = both ranks by the min p).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cm_rows  # noqa: E402
import common_mode as cm  # noqa: E402
from common import POT, ZScore  # noqa: E402
from scorers import Transform, _finite, layer_slices  # noqa: E402

TINY = float(np.finfo(np.float32).tiny)
B = 300


def row_eps_x(s, slices):
    s = np.asarray(s, np.float64)
    x = np.empty_like(s)
    for sl in slices:
        v = s[:, sl]
        eps = np.maximum(0.01 * v.mean(1, keepdims=True), TINY)
        u = np.log(v + eps)
        x[:, sl] = u - u.mean(1, keepdims=True)
    return x


def row_eps_ratio(s, slices):
    s = np.asarray(s, np.float64)
    y = np.empty_like(s)
    for sl in slices:
        v = s[:, sl]
        m = v.mean(1, keepdims=True)
        y[:, sl] = v / (m + np.maximum(0.01 * m, TINY))
    return y


class Variant:
    """fit(ref) then keys(rows, tail) for tail in z, POT, POT-two."""

    def __init__(self, name, ref, L):
        self.name = name
        self.slices = layer_slices(L)
        if name == "E":
            self.tr = Transform("layer logres", ref, L)
        up, lo = self.upper_lower(ref)
        self.z = ZScore(up)
        self.up = POT(up)
        self.lo = POT(-lo) if lo is not None else None

    def upper_lower(self, rows):
        """(the values the upper tail and z see, the values whose negation the lower tail sees)."""
        if self.name == "E":
            x = self.tr.apply(rows)
            return x, x
        if self.name == "rowEps-x":
            x = row_eps_x(rows, self.slices)
            return x, x
        if self.name == "daemon":
            x = row_eps_x(rows, self.slices)
            return np.exp(x), x
        if self.name == "ratio":
            return row_eps_ratio(rows, self.slices), None
        raise ValueError(self.name)

    def keys(self, rows, tail):
        up, lo = self.upper_lower(rows)
        if tail == "z":
            return self.z.rank_keys(up)
        ku = _finite(self.up.rank_keys(up))
        if tail == "POT":
            return ku
        if tail == "POT-two" and self.lo is not None:
            return np.maximum(ku, _finite(self.lo.rank_keys(-lo)))
        return None


VARIANTS = ["E", "rowEps-x", "daemon", "ratio"]
TAILS = ["z", "POT", "POT-two"]
E_NAME = {"E": "layer logres", "rowEps-x": "layer logres", "daemon": "layer logres", "ratio": "layer ratio"}


def ci(vals):
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def main():
    t0 = time.time()
    L, names = cm.layers()
    rng = np.random.default_rng(0)
    out = {}
    stored_bd = json.load(open(os.path.join(HERE, "..", "docs", "results", "cm_backdoor.json")))["results"]
    stored_f = json.load(open(os.path.join(HERE, "..", "docs", "results", "cm_faults.json")))["results"]

    # Backdoor present at calibration (E's run_backdoor: true-label target, carrying sets from ablation).
    info = json.load(open(os.path.join(cm_rows.CACHE, "bdcal_ablation.json")))
    clean, trig = cm_rows.load("bdcal_clean"), cm_rows.load("bdcal_trig")
    ref = clean["sal"][:cm.N_CAL]
    sel = (trig["pred"] == cm_rows.TRIGGER_TARGET) & (trig["label"] != cm_rows.TRIGGER_TARGET)
    rows = trig["sal"][sel]
    asr_bd = info["asr_backdoored"]
    single = {v["filter"]: v["asr"] for v in info["single_restore"].values()}
    sets = {"single": sorted(f for f, a in single.items() if asr_bd - a >= 0.05), "greedy": [g["filter"] for g in info["greedy"]]}
    print(f"backdoor at calibration: {len(rows)} triggered misclassified rows, {len(ref)} calibration rows; sets {sets}", flush=True)
    variants = {v: Variant(v, ref, L) for v in VARIANTS}
    print(f"  fitted in {time.time() - t0:.0f} s", flush=True)
    print(f"{'set':7s} {'tail':8s}" + "".join(f"{v:>24s}" for v in VARIANTS) + "   E stored (logres / ratio)")
    for sname, T in sets.items():
        for tail in TAILS:
            line = f"{sname:7s} {tail:8s}"
            for v in VARIANTS:
                k = variants[v].keys(rows, tail)
                if k is None:
                    line += f"{'-':>24s}"
                    continue
                R = cm.ranks(k, np.array(T))
                m = float(np.mean(1.0 / R.min(1)))
                c = cm.boot(R, rng, lambda r: np.mean(1.0 / r.min(1))) if B else [m, m]
                out[f"backdoor|{sname}|{tail}|{v}"] = {"MRR-first": m, "ci": c}
                line += f"   {m:.3f} [{c[0]:.3f},{c[1]:.3f}]"
            e1 = stored_bd[f"{sname}|{tail} | layer logres"]
            e2 = stored_bd[f"{sname}|{tail} | layer ratio"]
            line += f"   {e1['MRR-first']:.3f} [{e1['MRR-first_ci'][0]:.3f},{e1['MRR-first_ci'][1]:.3f}] / {e2['MRR-first']:.3f}"
            print(line, flush=True)

    # Single-filter faults (E's run_faults: healthy model, 12 filters, zeroed and scaled x4), per-row MRR.
    h = cm_rows.load("healthy_clean")
    cal_pool, _ = cm_rows.split()
    ref = h["sal"][cal_pool[:cm.N_CAL]]
    variants = {v: Variant(v, ref, L) for v in VARIANTS}
    model_filters = cm_rows.fault_filters(__import__("train_fmnist").load_model())
    for kind in ["zeroed", "scaled"]:
        print(f"\nfault '{kind}', one filter at a time (per-row MRR, mean over {len(model_filters)} filters)", flush=True)
        for tail in TAILS:
            line = f"{kind:7s} {tail:8s}"
            for v in VARIANTS:
                Rs = []
                for _, _, f in model_filters:
                    d = cm_rows.load(f"fault_{kind}_{f}")
                    k = variants[v].keys(d["sal"], tail)
                    if k is None:
                        break
                    Rs.append(cm.ranks(k, np.array([f]))[:, 0])
                if not Rs:
                    line += f"{'-':>24s}"
                    continue
                m = float(np.mean([np.mean(1.0 / r) for r in Rs]))
                bs = [np.mean([np.mean(1.0 / r[rng.integers(0, len(r), len(r))]) for r in Rs]) for _ in range(B)]
                c = ci(bs)
                out[f"{kind}|{tail}|{v}"] = {"MRR": m, "ci": c}
                line += f"   {m:.3f} [{c[0]:.3f},{c[1]:.3f}]"
            e1 = stored_f[f"{kind}|{tail} | layer logres"]
            e2 = stored_f[f"{kind}|{tail} | layer ratio"]
            line += f"   {e1['MRR']:.3f} [{e1['MRR_ci'][0]:.3f},{e1['MRR_ci'][1]:.3f}] / {e2['MRR']:.3f}"
            print(line, flush=True)
    print(f"\nruntime {time.time() - t0:.0f} s")
    path = os.path.join(cm_rows.CACHE, "check_logres_eps.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
