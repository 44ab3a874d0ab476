#!/usr/bin/env python3
"""Depth bias: share of each row's top-20 filters per layer, z-score vs POT, beside each layer's share of
filters (method.md §6.5). Reference = data/feeds/fmnist/reference; evaluated on shifted (inverted) and
clean rows.

    python3 scripts/experiments_depth_bias.py     # prints a table, writes docs/results/depth_bias.png
"""
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments_common import POT, RowNormalised, ZScore, feed, layer_of_filter, save_fig, top_k  # noqa: E402

K_TOP = 20


def shares(keys, layer, L):
    picks = layer[top_k(keys, K_TOP)]
    return np.bincount(picks.ravel(), minlength=L) / picks.size


def main():
    ref, schema, _ = feed("reference")
    layer = layer_of_filter(schema)
    names = [l["name"] for l in schema["layers"]]
    L = len(names)
    filt_share = np.bincount(layer, minlength=L) / len(layer)
    # method.md §7 checks: gradient size vs confidence, and co-movement of filters within a layer.
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
