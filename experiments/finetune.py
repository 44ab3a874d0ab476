#!/usr/bin/env python3
"""One-step fine-tuning of the top-k filters (Levin et al. 2022, as in Wang & Sato 2023 §5):
for every shifted (inverted) sample the healthy model misclassifies, take its top-k filters by a score,
apply one gradient step theta <- theta - lr * dL/dtheta to those filters only (L = cross-entropy vs
the true label of that one sample), and check whether the sample is now classified correctly.
k = 1..25; POT vs z-score vs random (5 random draws per sample); lr 0.001 (the brief) and 0.01.

    python3 experiments/finetune.py    # prints a table, writes docs/results/finetune.png
    python3 experiments/finetune.py --shift rotated --ks 1,5,10,25
        # a shift from experiments/shifts.py (rows computed on the fly), only the listed k;
        # writes docs/results/finetune_<shift>.png
"""
import argparse
import os
import sys
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call  # noqa: E402

from common import HERE, POT, RowNormalised, ZScore, feed, save_fig  # noqa: E402

sys.path.insert(0, HERE)
from train_fmnist import load_fmnist, load_model, to_tensor  # noqa: E402
from saliency_tap import conv_weights, layer_offsets  # noqa: E402

KMAX = 25
LRS = [0.001, 0.01]
N_RANDOM = 5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shift", help="a shift from experiments/shifts.py (default: the bundled inverted feed)")
    ap.add_argument("--ks", help="comma list of k to evaluate (default 1..25)")
    a = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    ref, schema, _ = feed("reference")
    model = load_model()
    if a.shift:
        from shifts import shift_rows, to_input
        if a.shift.startswith("digits"):
            raise SystemExit("digits has no true Fashion-MNIST label: fine-tuning towards it is not defined")
        rows, meta = shift_rows(model, a.shift)
        x = to_input(meta["x"])
        meta = {k: meta[k] for k in ("label", "predicted")}
    else:
        rows, _, meta = feed("shifted")
    ks = [int(k) for k in a.ks.split(",")] if a.ks else list(range(1, KMAX + 1))
    convs = conv_weights(model)
    conv_names = [n for n, _ in convs]
    offs = layer_offsets(schema)
    K = offs[-1]
    # global filter -> (param name, channel)
    where = [(conv_names[li], j - offs[li]) for li in range(len(conv_names)) for j in range(offs[li], offs[li + 1])]

    if not a.shift:
        xte, _ = load_fmnist("test")
        x = to_tensor(255 - xte[np.array(meta["index"])])
    labels = np.array(meta["label"])
    wrong = np.flatnonzero(np.array(meta["predicted"]) != labels)
    print(f"shifted rows {len(rows)}, misclassified by the healthy model: {len(wrong)}")

    scorers = [ZScore(ref), POT(ref), RowNormalised(ZScore, ref), RowNormalised(POT, ref)]
    orders = {s.name: np.argsort(-s.rank_keys(rows[wrong]), axis=1, kind="stable") for s in scorers}
    rng = np.random.default_rng(0)
    rand_orders = [np.stack([rng.permutation(K) for _ in wrong]) for _ in range(N_RANDOM)]

    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    weights = [w for _, w in convs]

    def corrected(xi, yi, grads, order, k, lr):
        new = dict(params)
        for f in order[:k]:
            name, c = where[f]
            if new[name] is params[name]:
                new[name] = params[name].clone()
            new[name][c] -= lr * grads[name][c]
        with torch.no_grad():
            out = functional_call(model, (new, buffers), (xi,))
        return int(out.argmax(1).item() == yi)

    results = {lr: {} for lr in LRS}
    all_filters = {lr: 0 for lr in LRS}
    for wi, i in enumerate(wrong):
        xi, yi = x[i : i + 1], int(labels[i])
        loss = F.cross_entropy(model(xi), torch.tensor([yi]))
        g = dict(zip(conv_names, torch.autograd.grad(loss, weights)))
        for lr in LRS:
            all_filters[lr] += corrected(xi, yi, g, np.arange(K), K, lr)
            for name, o in list(orders.items()) + [(f"random{r}", ro) for r, ro in enumerate(rand_orders)]:
                acc = results[lr].setdefault(name, np.zeros(KMAX))
                for k in ks:
                    acc[k - 1] += corrected(xi, yi, g, o[wi], k, lr)
    n = len(wrong)
    fig, axes = plt.subplots(1, len(LRS), figsize=(12, 4))
    for ax, lr in zip(axes, LRS):
        res = {k: v / n for k, v in results[lr].items() if not k.startswith("random")}
        rnd = np.mean([v / n for k, v in results[lr].items() if k.startswith("random")], axis=0)
        res["random (mean of 5)"] = rnd
        print(f"\nlr={lr}: share of the {n} misclassified {a.shift or 'inverted'} samples corrected by one step on the top-k filters")
        print(f"{'k':>3s}" + "".join(f"{m:>22s}" for m in res))
        for k in (ks if a.shift else [1, 2, 3, 5, 10, 15, 20, 25]):
            print(f"{k:3d}" + "".join(f"{v[k - 1]:22.3f}" for v in res.values()))
        print(f"all {K} conv filters: {all_filters[lr] / n:.3f}")
        for m, v in res.items():
            kx = np.array(ks)
            ax.plot(kx, v[kx - 1], (":" if m.startswith("random") else "-") + ("o" if a.shift else ""), ms=3, label=m)
        ax.axhline(all_filters[lr] / n, color="gray", lw=0.8, ls="--", label=f"all {K} filters")
        ax.set_title(f"{a.shift + ', ' if a.shift else ''}one step, lr={lr}")
        ax.set_xlabel("k (filters updated)")
        ax.set_ylabel("share of misclassified shifted samples corrected")
    axes[0].legend(fontsize=8)
    save_fig(fig, f"finetune_{a.shift}.png" if a.shift else "finetune.png")
    print(f"runtime {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
