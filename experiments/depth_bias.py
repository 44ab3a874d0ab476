#!/usr/bin/env python3
"""Depth bias: share of each row's top-20 filters per layer, z-score vs POT, beside each layer's share of
filters (docs/method.md §6.5). Reference = data/feeds/fmnist/reference; evaluated on shifted (inverted) and
clean rows.

    python3 experiments/depth_bias.py     # prints a table, writes docs/results/depth_bias.png
    python3 experiments/depth_bias.py --shift all   # every shift in experiments/shifts.py (rows computed
                                                  # on the fly, one thread) -> docs/results/depth_bias_shifts.png
    python3 experiments/depth_bias.py --shift rotated,noise
"""
import argparse
import sys
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import POT, RowNormalised, ZScore, feed, layer_of_filter, save_fig, top_k  # noqa: E402

K_TOP = 20


def shares(keys, layer, L):
    picks = layer[top_k(keys, K_TOP)]
    return np.bincount(picks.ravel(), minlength=L) / picks.size


def print_table(title, res, names, filt_share):
    print(f"\n{title}: share of top-{K_TOP} picks per layer")
    print(f"{'scorer':22s}" + "".join(f"{n:>8s}" for n in names) + "   deep3")
    print(f"{'share of filters':22s}" + "".join(f"{v:8.3f}" for v in filt_share) + f"{filt_share[3:].sum():8.3f}")
    for s, v in res.items():
        print(f"{s:22s}" + "".join(f"{x:8.3f}" for x in v) + f"{v[3:].sum():8.3f}")


def run_shifts(shift_names):
    """Depth bias on shifts computed on the fly (experiments/shifts.py); same scorers, same reference."""
    import torch
    torch.set_num_threads(1)
    from shifts import DIGITS_TARGETS, shift_rows
    from train_fmnist import load_model
    t0 = time.time()
    ref, schema, _ = feed("reference")
    layer = layer_of_filter(schema)
    names = [l["name"] for l in schema["layers"]]
    L = len(names)
    filt_share = np.bincount(layer, minlength=L) / len(layer)
    scorers = [ZScore(ref), POT(ref), RowNormalised(ZScore, ref), RowNormalised(POT, ref)]
    model = load_model()
    results = {}
    for sh in shift_names:
        rows, meta = shift_rows(model, sh)
        keys = {s.name: s.rank_keys(rows) for s in scorers}
        results[sh] = {n: shares(k, layer, L) for n, k in keys.items()}
        # per-row share of the top-20 in the three deepest layers (conv4, conv5, down); paired POT - z-score
        deep = {n: (layer[top_k(k, K_TOP)] >= 3).mean(1) for n, k in keys.items()}
        d = deep["POT"] - deep["z-score"]
        ci = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
        tgt = DIGITS_TARGETS.get(sh, "true label")
        acc = f"accuracy {meta['accuracy']:.3f}" if not sh.startswith("digits") else \
            f"identity-mapping agreement {meta['accuracy']:.3f} (chance)"
        print_table(f"{sh} ({rows.shape[0]} rows, loss target: {tgt}, {acc}, "
                    f"median confidence {np.median(meta['confidence']):.2f}, mean saliency {rows.mean():.3f})",
                    results[sh], names, filt_share)
        print(f"deep3 share, POT - z-score, paired over rows: {d.mean():+.3f} +/- {ci:.3f} (95% normal CI)")
    print(f"\n(reference mean saliency {ref.mean():.3f})")
    cols = min(3, len(shift_names))
    nr = (len(shift_names) + cols - 1) // cols
    fig, axes = plt.subplots(nr, cols, figsize=(5 * cols, 3.3 * nr), sharey=True, squeeze=False)
    for ax, sh in zip(axes.ravel(), shift_names):
        series = [("share of filters", filt_share)] + list(results[sh].items())
        w = 0.8 / len(series)
        x = np.arange(L)
        for i, (lab, v) in enumerate(series):
            ax.bar(x + (i - (len(series) - 1) / 2) * w, v, w, label=lab,
                   color="lightgray" if i == 0 else None, edgecolor="k" if i == 0 else None)
        ax.set_xticks(x, names, fontsize=8)
        ax.set_title(sh, fontsize=10)
    for ax in axes.ravel()[len(shift_names):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"share of per-row top-{K_TOP} picks per layer, by shift")
    fig.tight_layout()
    save_fig(fig, "depth_bias_shifts.png")
    print(f"runtime {time.time() - t0:.0f} s")
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shift", help="comma list of shifts from experiments/shifts.py, or 'all' (default: the bundled "
                    "shifted + clean feeds)")
    a = ap.parse_args()
    if a.shift:
        from shifts import SHIFTS
        return run_shifts(["clean"] + SHIFTS if a.shift == "all" else a.shift.split(","))
    ref, schema, _ = feed("reference")
    layer = layer_of_filter(schema)
    names = [l["name"] for l in schema["layers"]]
    L = len(names)
    filt_share = np.bincount(layer, minlength=L) / len(layer)
    # docs/method.md §7 checks: gradient size vs confidence, and co-movement of filters within a layer.
    from scipy.stats import spearmanr
    _, _, rmeta = feed("reference")
    conf = np.array(rmeta["confidence"])
    rho = spearmanr(ref.mean(1), conf).statistic
    print(f"reference: Spearman(row mean saliency, confidence) = {rho:.3f}")
    for i, n in enumerate(names):
        cols = ref[:, layer == i]
        cols = cols[:, cols.std(0) > 0]
        r = spearmanr(cols).statistic
        off = r[~np.eye(len(r), dtype=bool)] if np.ndim(r) == 2 else np.array([r])
        print(f"reference: median within-layer Spearman between filters, {n}: {np.median(off):.2f}")
    scorers = [ZScore(ref), POT(ref), RowNormalised(ZScore, ref), RowNormalised(POT, ref)]
    results = {}
    for feed_name in ["shifted", "clean"]:
        rows, _, _ = feed(feed_name)
        results[feed_name] = {s.name: shares(s.rank_keys(rows), layer, L) for s in scorers}
        print(f"\n{feed_name} ({rows.shape[0]} rows): share of top-{K_TOP} picks per layer")
        print(f"{'scorer':22s}" + "".join(f"{n:>8s}" for n in names))
        print(f"{'share of filters':22s}" + "".join(f"{v:8.3f}" for v in filt_share))
        for s, v in results[feed_name].items():
            print(f"{s:22s}" + "".join(f"{x:8.3f}" for x in v))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, feed_name in zip(axes, ["shifted", "clean"]):
        series = [("share of filters", filt_share)] + list(results[feed_name].items())
        w = 0.8 / len(series)
        x = np.arange(L)
        for i, (lab, v) in enumerate(series):
            ax.bar(x + (i - (len(series) - 1) / 2) * w, v, w, label=lab,
                   color="lightgray" if i == 0 else None, edgecolor="k" if i == 0 else None)
        ax.set_xticks(x, [f"{n}\n({schema['layers'][i]['filters']})" for i, n in enumerate(names)])
        ax.set_title(f"{feed_name} rows: share of per-row top-{K_TOP} picks")
    axes[0].set_ylabel("share")
    axes[0].legend(fontsize=8)
    save_fig(fig, "depth_bias.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
