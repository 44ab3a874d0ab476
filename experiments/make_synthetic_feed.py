#!/usr/bin/env python3
"""Synthetic saliency feed whose layers have different tail shapes (docs/method.md §2, §6.4-5).

Every filter j of layer l draws i.i.d. values from its layer's family with per-filter
parameters (scale, and shape where the family has one):

    layer         family                           tail
    conv_logn     lognormal, sigma 0.6..1.0         heavy-ish (subexponential)
    conv_gpd      GPD, shape 0.2..0.4               heavy (Pareto-type, xi = shape)
    conv_half     half-normal                        light (Gaussian)
    conv_exp      exponential                        exponential (xi = 0)
    conv_deep     gamma, shape 20..40 (large mean, CV 0.16..0.22)   light, narrow

Planted filters in the shifted rows take the value whose survival probability under the
filter's OWN distribution is a given p (log-uniform in [--p-min, --p-max]), computed exactly
from the family's quantile function (scipy.stats ``isf``). They are therefore "equally rare"
whatever the layer: a score that ranks by tail probability should find them all, a score that
ranks by (s - mu)/sigma should favour the heavy-tailed layers.

Outputs (into --out, default data/feeds/synthetic/):
    schema.json     {"model", "layers": [{"name", "filters"}]}  (+ "families": per-layer params)
    reference.npy   [n_ref, K] float32   calibration rows (all clean)
    clean.npy       [n_clean, K] float32 fresh clean rows
    shifted.npy     [n_shift, K] float32 clean rows with planted filters
    planted.json    per shifted row: planted filters (global index, layer, channel, p)
    demo.npy/.json  (unless --no-demo) calibration rows, then clean rows, then a persistent
                    fault: a fixed small set of filters stays extreme for --demo-fault rows.

Deterministic given --seed. Needs numpy and scipy.
"""
import argparse
import json
import os
import sys

import numpy as np
from scipy import stats

# name, family, filters (default sizes; scaled with --scale-filters)
LAYERS = [
    ("conv_logn", "lognormal", 32),
    ("conv_gpd", "gpd", 64),
    ("conv_half", "halfnormal", 96),
    ("conv_exp", "exponential", 128),
    ("conv_deep", "gamma", 64),
]


def filter_params(family, n, rng):
    """Per-filter parameters of one layer (lists of dicts, JSON-able)."""
    scale = np.exp(rng.normal(0.0, 0.5, n)) * 1e-3  # gradient-like magnitudes, per-filter spread
    if family == "lognormal":
        sig = rng.uniform(0.6, 1.0, n)
        return [{"sigma": float(s), "scale": float(c)} for s, c in zip(sig, scale)]
    if family == "gpd":
        xi = rng.uniform(0.2, 0.4, n)
        return [{"shape": float(x), "scale": float(c)} for x, c in zip(xi, scale)]
    if family == "halfnormal":
        return [{"scale": float(c)} for c in scale]
    if family == "exponential":
        return [{"scale": float(c)} for c in scale]
    if family == "gamma":
        a = rng.uniform(20.0, 40.0, n)
        return [{"shape": float(x), "scale": float(c) / 10} for x, c in zip(a, scale)]
    raise ValueError(family)


def frozen(family, p):
    """scipy.stats frozen distribution of one filter."""
    if family == "lognormal":
        return stats.lognorm(s=p["sigma"], scale=p["scale"])
    if family == "gpd":
        return stats.genpareto(c=p["shape"], scale=p["scale"])
    if family == "halfnormal":
        return stats.halfnorm(scale=p["scale"])
    if family == "exponential":
        return stats.expon(scale=p["scale"])
    if family == "gamma":
        return stats.gamma(a=p["shape"], scale=p["scale"])
    raise ValueError(family)


def sample_column(family, p, n, rng):
    """n i.i.d. values of one filter, drawn with numpy's generator (deterministic)."""
    if family == "lognormal":
        return p["scale"] * np.exp(p["sigma"] * rng.standard_normal(n))
    if family == "gpd":
        u = rng.random(n)
        xi = p["shape"]
        return p["scale"] * ((1 - u) ** (-xi) - 1) / xi
    if family == "halfnormal":
        return p["scale"] * np.abs(rng.standard_normal(n))
    if family == "exponential":
        return p["scale"] * rng.standard_exponential(n)
    if family == "gamma":
        return p["scale"] * rng.standard_gamma(p["shape"], n)
    raise ValueError(family)


class Feed:
    def __init__(self, sizes, seed):
        self.rng = np.random.default_rng(seed)
        self.layers = []
        start = 0
        for (name, family, _), size in zip(LAYERS, sizes):
            params = filter_params(family, size, self.rng)
            self.layers.append({"name": name, "family": family, "filters": size, "start": start, "params": params})
            start += size
        self.K = start
        self.owner = np.concatenate([np.full(l["filters"], i) for i, l in enumerate(self.layers)])

    def schema(self, model):
        return {
            "model": model,
            "layers": [{"name": l["name"], "filters": l["filters"]} for l in self.layers],
            "families": [{"name": l["name"], "family": l["family"], "first_filter": l["start"]} for l in self.layers],
        }

    def locate(self, j):
        l = self.layers[self.owner[j]]
        return l, j - l["start"]

    def rows(self, n):
        out = np.empty((n, self.K), dtype=np.float64)
        for l in self.layers:
            for c, p in enumerate(l["params"]):
                out[:, l["start"] + c] = sample_column(l["family"], p, n, self.rng)
        return out

    def value_at(self, j, p):
        """The value whose survival probability under filter j's own law is p (exact isf)."""
        l, c = self.locate(j)
        return float(frozen(l["family"], l["params"][c]).isf(p))


def log_uniform(rng, lo, hi, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/feeds/synthetic")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--sizes", default=",".join(str(s) for _, _, s in LAYERS),
                    help="filters per layer, comma-separated, in layer order %s" % [n for n, _, _ in LAYERS])
    ap.add_argument("--reference", type=int, default=2000, help="reference (calibration) rows")
    ap.add_argument("--clean", type=int, default=500, help="clean evaluation rows")
    ap.add_argument("--shifted", type=int, default=500, help="rows with planted filters")
    ap.add_argument("--planted-per-layer", type=int, default=4,
                    help="size of the pool of faulty filters per layer (shared by all shifted rows)")
    ap.add_argument("--per-row", type=int, default=1,
                    help="planted filters per layer in each shifted row (drawn from the layer's pool)")
    ap.add_argument("--p-min", type=float, default=1e-5, help="smallest survival probability of a planted value")
    ap.add_argument("--p-max", type=float, default=1e-4, help="largest survival probability of a planted value")
    ap.add_argument("--no-demo", action="store_true", help="skip demo.npy/demo.json")
    ap.add_argument("--demo-calibration", type=int, default=1000)
    ap.add_argument("--demo-clean", type=int, default=400)
    ap.add_argument("--demo-fault", type=int, default=200)
    ap.add_argument("--demo-filters", type=int, default=3, help="persistently faulty filters in the demo")
    ap.add_argument("--demo-p-min", type=float, default=1e-7)
    ap.add_argument("--demo-p-max", type=float, default=1e-5)
    args = ap.parse_args()

    sizes = [int(s) for s in args.sizes.split(",")]
    if len(sizes) != len(LAYERS) or min(sizes) < args.planted_per_layer:
        ap.error("--sizes needs %d positive counts, each ≥ --planted-per-layer" % len(LAYERS))
    if not (0 < args.p_min <= args.p_max < 1):
        ap.error("need 0 < p-min ≤ p-max < 1")
    os.makedirs(args.out, exist_ok=True)
    feed = Feed(sizes, args.seed)
    rng = feed.rng

    ref = feed.rows(args.reference)
    clean = feed.rows(args.clean)
    shifted = feed.rows(args.shifted)

    # Faulty pools: per layer, `planted_per_layer` filters chosen at random.
    pools = [sorted(rng.choice(l["filters"], args.planted_per_layer, replace=False).tolist()) for l in feed.layers]
    pool_global = [[l["start"] + c for c in pool] for l, pool in zip(feed.layers, pools)]
    planted_rows = []
    for r in range(args.shifted):
        entries = []
        for l, pool in zip(feed.layers, pool_global):
            for j in rng.choice(pool, args.per_row, replace=False):
                p = float(log_uniform(rng, args.p_min, args.p_max))
                shifted[r, j] = feed.value_at(int(j), p)
                entries.append({"filter": int(j), "layer": l["name"], "channel": int(j - l["start"]), "p": p})
        planted_rows.append({"row": r, "planted": entries})

    def save(name, a):
        np.save(os.path.join(args.out, name), a.astype(np.float32))

    save("reference.npy", ref)
    save("clean.npy", clean)
    save("shifted.npy", shifted)
    schema = feed.schema("synthetic-tails")
    with open(os.path.join(args.out, "schema.json"), "w") as f:
        json.dump(schema, f, indent=1)
    with open(os.path.join(args.out, "planted.json"), "w") as f:
        json.dump({
            "seed": args.seed, "filters": feed.K, "p_range": [args.p_min, args.p_max],
            "command": "python3 experiments/make_synthetic_feed.py " + " ".join(sys.argv[1:]),
            "pools": {l["name"]: pg for l, pg in zip(feed.layers, pool_global)},
            "rows": planted_rows,
        }, f, separators=(",", ":"))

    if not args.no_demo:
        dcal = feed.rows(args.demo_calibration)
        dclean = feed.rows(args.demo_clean)
        dfault = feed.rows(args.demo_fault)
        # A fixed set of faulty filters in distinct layers (a persistent fault/domain shift).
        layer_ids = rng.choice(len(feed.layers), min(args.demo_filters, len(feed.layers)), replace=False)
        faulty = []
        for li in sorted(layer_ids.tolist()):
            l = feed.layers[li]
            c = int(rng.integers(l["filters"]))
            faulty.append({"filter": l["start"] + c, "layer": l["name"], "channel": c})
        for e in faulty:
            ps = log_uniform(rng, args.demo_p_min, args.demo_p_max, args.demo_fault)
            l, c = feed.locate(e["filter"])
            dfault[:, e["filter"]] = frozen(l["family"], l["params"][c]).isf(ps)
        demo = np.vstack([dcal, dclean, dfault])
        save("demo.npy", demo)
        a, b = args.demo_calibration, args.demo_calibration + args.demo_clean
        with open(os.path.join(args.out, "demo.json"), "w") as f:
            json.dump({
                "seed": args.seed, "filters": feed.K, "rows": int(demo.shape[0]),
                "phases": [
                    {"name": "calibration", "rows": [0, a]},
                    {"name": "clean", "rows": [a, b]},
                    {"name": "fault", "rows": [b, b + args.demo_fault]},
                ],
                "fault_p_range": [args.demo_p_min, args.demo_p_max],
                "faulty": faulty,
                "note": "row ranges are half-open [start, end); in the fault phase each faulty filter takes, "
                        "in every row, the value of survival p ~ log-uniform(fault_p_range) under its own law",
            }, f, indent=1)

    print("wrote %s: K=%d filters %s; reference %d, clean %d, shifted %d rows%s" % (
        args.out, feed.K, sizes, args.reference, args.clean, args.shifted,
        "" if args.no_demo else "; demo %d rows" % (args.demo_calibration + args.demo_clean + args.demo_fault)))


if __name__ == "__main__":
    main()
