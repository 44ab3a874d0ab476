#!/usr/bin/env python3
"""Recovery of planted faulty filters (docs/method.md §6.4): recall@k and MRR per planted filter, by layer
and fault kind, for POT vs z-score vs random (and both on rows divided by their own mean).

Reference = data/feeds/fmnist/reference (healthy model); test rows = data/feeds/fmnist/faulty (faulty
model). Zeroed and scaled filters are evaluated on every faulty row; backdoor filters on the triggered
rows only (the rows where the backdoor acts). Two views:
  per-row : each row's own ranking (what the daemon's `top` with window=latest sees);
  window  : the ranking of the score averaged over those rows (a `top` with a window).

    python3 experiments/faults.py    # prints tables, writes docs/results/faults_recall.png
    python3 experiments/faults.py --lower-tail   # adds lower-tail diagnostics (faults_recall_lower.png)
    python3 experiments/faults.py --per-kind     # one faulty model per fault kind (zeroed only, scaled
        # only, backdoor only; same filters and images as the bundled feed, rows computed on the fly, one
        # thread), upper and lower tail -> docs/results/faults_per_kind.png
"""
import os
import sys
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import FEED_DIR, POT, LowerTail, RowNormalised, ZScore, feed, load_json, ranks_of, save_fig  # noqa: E402

KS = [1, 5, 10, 20, 50]


def rank_planted(keys, planted, trig):
    """Per-row ranks (list of arrays) and window ranks (list of int) of each planted filter."""
    if not np.all(np.isfinite(keys)):
        keys = np.nan_to_num(keys, posinf=1e12)
    pr, wr = [], []
    for p in planted:
        sel = trig if p["kind"] == "backdoor" else np.ones(len(keys), bool)
        pr.append(ranks_of(keys[sel], [p["filter"]])[:, 0])
        wr.append(int(ranks_of(keys[sel].mean(0, keepdims=True), [p["filter"]])[0, 0]))
    return pr, wr


def per_kind():
    """Plant one fault kind at a time (record_feed.plant_faults with the same seeded draws) and score."""
    import torch
    torch.set_num_threads(1)
    from record_feed import TRIGGER_TARGET, one_kind, stamp_trigger
    from shifts import to_input  # noqa: F401  (sys.path)
    from train_fmnist import accuracy, load_fmnist, load_model, to_tensor
    t0 = time.time()
    ref, schema, _ = feed("reference")
    _, _, fmeta = feed("faulty")
    info = load_json(os.path.join(FEED_DIR, "faulty.faults.json"))
    K = ref.shape[1]
    model = load_model()
    xte, yte = load_fmnist("test")
    xtr, ytr = load_fmnist("train")
    scorers = [ZScore(ref), POT(ref), RowNormalised(ZScore, ref), RowNormalised(POT, ref),
               LowerTail(ZScore, ref), LowerTail(POT, ref)]
    names = [s.name for s in scorers]
    rnd_mrr = np.mean(1.0 / np.arange(1, K + 1))
    table, curves = {}, {}
    for kind in ["zeroed", "scaled", "backdoor"]:
        # The same seeded sequence as record_feed.main: test split, train subset, channels, triggered rows.
        faulty, planted, fault_i, rest, trig, b = one_kind(model, schema, kind, xte, yte, xtr, ytr, fmeta, info)
        rows = b.saliency
        xr, yr = to_tensor(xte[rest]), torch.from_numpy(yte[rest])
        nt = yr != TRIGGER_TARGET
        with torch.no_grad():
            asr = (faulty(to_tensor(stamp_trigger(xte[rest]))[nt]).argmax(1) == TRIGGER_TARGET).float().mean().item()
        acc = accuracy(faulty, xr, yr)
        acc_rows = float(np.mean(b.predicted == yte[fault_i]))
        print(f"\n=== {kind} only: {len(planted)} filters "
              + ", ".join(f"{p['layer']}[{p['channel']}]" for p in planted)
              + f"; held-out clean accuracy {acc:.3f}, trigger -> class {TRIGGER_TARGET} {asr:.3f}; "
              f"accuracy on the 400 rows {acc_rows:.3f}; mean saliency {rows.mean():.4f} (ref {ref.mean():.4f})")
        print(f"{'scorer':22s}" + "".join(f"  R@{k:<3d}" for k in KS) + "     MRR  window ranks")
        for s in scorers:
            pr, wr = rank_planted(s.rank_keys(rows), planted, trig)
            rr = np.concatenate(pr)
            rec = [np.mean(rr <= k) for k in KS]
            mrr = np.mean([np.mean(1.0 / r) for r in pr])
            table[(kind, s.name)] = (rec, mrr, wr)
            curves[(kind, s.name)] = rr
            print(f"{s.name:22s}" + "".join(f"  {v:5.3f}" for v in rec) + f"  {mrr:6.3f}  {wr}")
        print(f"{'random':22s}" + "".join(f"  {k / K:5.3f}" for k in KS) + f"  {rnd_mrr:6.3f}")
        table[(kind, "effect")] = (acc, asr)

    print("\n== per-kind summary: per-row recall@20 / MRR (backdoor on triggered rows) ==")
    print(f"{'kind':10s}" + "".join(f"{n:>22s}" for n in names) + f"{'random':>16s}")
    for kind in ["zeroed", "scaled", "backdoor"]:
        print(f"{kind:10s}" + "".join(f"{table[(kind, n)][0][KS.index(20)]:>11.3f} / {table[(kind, n)][1]:6.3f}"
                                      for n in names) + f"{20 / K:>7.3f} / {rnd_mrr:6.3f}")
    kk = np.arange(1, 101)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
    for ax, kind in zip(axes, ["zeroed", "scaled", "backdoor"]):
        for n in names:
            ax.plot(kk, [np.mean(curves[(kind, n)] <= k) for k in kk], "--" if "lower" in n else "-", label=n)
        ax.plot(kk, kk / K, "k:", label="random")
        ax.set_title(f"{kind} only (clean acc {table[(kind, 'effect')][0]:.2f})", fontsize=10)
        ax.set_xlabel("k")
    axes[0].set_ylabel("per-row recall@k")
    axes[0].legend(fontsize=7)
    save_fig(fig, "faults_per_kind.png")
    print(f"runtime {time.time() - t0:.0f} s")
    return 0


def main():
    if "--per-kind" in sys.argv:
        return per_kind()
    ref, schema, _ = feed("reference")
    rows, _, meta = feed("faulty")
    info = load_json(os.path.join(FEED_DIR, "faulty.faults.json"))
    planted = info["planted"]
    K = rows.shape[1]
    trig = np.array(meta["triggered"], dtype=bool)
    scorers = [ZScore(ref), POT(ref), RowNormalised(ZScore, ref), RowNormalised(POT, ref)]
    if "--lower-tail" in sys.argv:
        scorers += [LowerTail(ZScore, ref), LowerTail(POT, ref)]
    names = [s.name for s in scorers] + ["random"]

    # ranks[scorer][i] = ranks of planted filter i over its evaluation rows (per-row), and its window rank
    per_row, window = {}, {}
    for s in scorers:
        keys = s.rank_keys(rows)
        if not np.all(np.isfinite(keys)):
            keys = np.nan_to_num(keys, posinf=1e12)
        pr, wr = [], []
        for p in planted:
            sel = trig if p["kind"] == "backdoor" else np.ones(len(rows), bool)
            pr.append(ranks_of(keys[sel], [p["filter"]])[:, 0])
            mean_keys = keys[sel].mean(0, keepdims=True)
            wr.append(int(ranks_of(mean_keys, [p["filter"]])[0, 0]))
        per_row[s.name], window[s.name] = pr, wr

    def rnd_recall(k):
        return k / K

    rnd_mrr = np.mean(1.0 / np.arange(1, K + 1))

    print(f"planted filters: {len(planted)} of K={K}; faulty rows {len(rows)} ({trig.sum()} triggered)")
    print(f"effect: {info['effect']}")
    hdr = "".join(f"  R@{k:<3d}" for k in KS)
    for view in ["per-row", "window"]:
        print(f"\n== {view} ranking: recall@k and MRR per planted filter ==")
        for i, p in enumerate(planted):
            print(f"{p['layer']}[{p['channel']}] #{p['filter']} {p['kind']} (depth {p['depth']})")
            for n in names:
                if n == "random":
                    rec = [rnd_recall(k) for k in KS]
                    mrr = rnd_mrr
                elif view == "per-row":
                    r = per_row[n][i]
                    rec = [np.mean(r <= k) for k in KS]
                    mrr = np.mean(1.0 / r)
                else:
                    r = window[n][i]
                    rec = [float(r <= k) for k in KS]
                    mrr = 1.0 / r
                extra = f"  rank {window[n][i]}" if view == "window" and n != "random" else ""
                print(f"   {n:20s}" + "".join(f"  {v:5.2f}" for v in rec) + f"  MRR {mrr:.3f}{extra}")

    # Summary by fault kind and by depth (per-row view)
    groups = {}
    for i, p in enumerate(planted):
        groups.setdefault(("kind", p["kind"]), []).append(i)
        groups.setdefault(("layer", p["layer"]), []).append(i)
    print("\n== per-row recall@20 / MRR, averaged over planted filters in a group ==")
    print(f"{'group':18s}" + "".join(f"{n:>24s}" for n in names))
    summary = {}
    for g, idx in groups.items():
        cells = []
        for n in names:
            if n == "random":
                r20, mrr = rnd_recall(20), rnd_mrr
            else:
                r20 = np.mean([np.mean(per_row[n][i] <= 20) for i in idx])
                mrr = np.mean([np.mean(1.0 / per_row[n][i]) for i in idx])
            summary[(g, n)] = (r20, mrr)
            cells.append(f"{r20:7.3f} / {mrr:6.3f}")
        print(f"{g[0] + ' ' + g[1]:18s}" + "".join(f"{c:>24s}" for c in cells))

    # Figure: per-row recall@k curves per layer group (all planted filters in the layer).
    layers = [l["name"] for l in schema["layers"]]
    kk = np.arange(1, 101)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharey=True)
    # a zeroed filter can have exactly zero saliency on every row: ties rank pessimistically.
    for ax, lay in zip(axes.ravel(), layers):
        idx = groups[("layer", lay)]
        for n in names:
            if n == "random":
                ax.plot(kk, kk / K, "k:", label="random")
                continue
            rr = np.concatenate([per_row[n][i] for i in idx])
            ax.plot(kk, [np.mean(rr <= k) for k in kk], label=n)
        kinds = ", ".join(f"#{planted[i]['filter']} {planted[i]['kind']}" for i in idx)
        ax.set_title(f"{lay}: {kinds}", fontsize=9)
        ax.set_xlabel("k")
    axes[0, 0].set_ylabel("per-row recall@k")
    axes[1, 0].set_ylabel("per-row recall@k")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Planted faulty filters, Fashion-MNIST CNN (K={K}); backdoor filters on triggered rows only")
    save_fig(fig, "faults_recall_lower.png" if "--lower-tail" in sys.argv else "faults_recall.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
