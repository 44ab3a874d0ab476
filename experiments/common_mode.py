#!/usr/bin/env python3
"""Localization with common-mode-free scorers (issue 13), on rows cached by experiments/cm_rows.py.

    python3 experiments/cm_rows.py all                # once (~8 min in four stages; cached under /tmp)
    python3 experiments/common_mode.py backdoor       # backdoor present at calibration -> cm_backdoor.png
    python3 experiments/common_mode.py backdoor --target-predicted   # same, predicted-label loss target
    python3 experiments/common_mode.py faults         # one filter AND one kind at a time -> cm_faults.png
    python3 experiments/common_mode.py shifts         # depth shares under shift, 3 severities -> cm_depth.png
    python3 experiments/common_mode.py cost           # ms per row of each transform at ResNet-50 width

Every scorer = one transform x one tail model (experiments/scorers.py): 7 x 6 = 42. Per-row ranks, ties
pessimistic. Metrics over (row, target filter) pairs: recall@k = share of pairs ranked <= k; MRR = mean of
1/rank over pairs; MRR-first = mean over rows of 1/(best rank of any target filter) (= MRR when there is
one target). 95% intervals: percentile bootstrap over rows (1,000 resamples; the calibration is held fixed,
so the intervals do not include fitting noise). Summaries are written to docs/results/cm_*.json.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import FIG_DIR, feed, layer_of_filter, save_fig  # noqa: E402
import cm_rows  # noqa: E402
from scorers import TAILS, TRANSFORMS, Transform, build  # noqa: E402

KS = [1, 5, 10, 20]
N_CAL = 4000
B = 1000


def layers():
    _, schema, _ = feed("reference")
    return layer_of_filter(schema), [l["name"] for l in schema["layers"]]


def ranks(keys, targets):
    """[rows, len(targets)] 1-based ranks, ties pessimistic (as common.ranks_of)."""
    kt = keys[:, targets]
    return (keys[:, None, :] >= kt[:, :, None]).sum(2)


def metrics(R):
    """R: [rows, T]. dict of recall@k, MRR, MRR-first."""
    out = {f"R@{k}": float(np.mean(R <= k)) for k in KS}
    out["MRR"] = float(np.mean(1.0 / R))
    out["MRR-first"] = float(np.mean(1.0 / R.min(1)))
    return out


def boot(R, rng, stat):
    n = len(R)
    vals = np.array([stat(R[rng.integers(0, n, n)]) for _ in range(B)])
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def calibrate(ref, L, cache=None):
    """All 42 scorers fitted on ref; pickled under the row cache as <cache>.pkl when a name is given."""
    import pickle
    t0 = time.time()
    p = os.path.join(cm_rows.CACHE, f"scorers_{cache}.pkl") if cache else None
    if p and os.path.exists(p):
        with open(p, "rb") as f:
            return pickle.load(f)
    sc = build(ref, L)
    if p:
        with open(p, "wb") as f:
            pickle.dump(sc, f)
    print(f"calibrated {len(sc)} scorers on {len(ref)} rows in {time.time() - t0:.0f} s", flush=True)
    return sc


def fmt(m, ci=None, key="MRR"):
    return f"{m[key]:.3f}" + (f" [{ci[0]:.2f},{ci[1]:.2f}]" if ci else "")


def rounded(o, nd=4):
    """JSON summaries: floats to nd decimals (small files)."""
    if isinstance(o, float):
        return round(o, nd)
    if isinstance(o, dict):
        return {k: rounded(v, nd) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [rounded(v, nd) for v in o]
    return o


def dump(obj, name):
    with open(os.path.join(FIG_DIR, name), "w") as f:
        json.dump(rounded(obj), f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote docs/results/{name}")


def table_md(rows, cols, cell):
    out = ["| scorer | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        out.append(f"| {r} | " + " | ".join(cell(r, c) for c in cols) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- backdoor
def run_backdoor():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    L, names = layers()
    info = json.load(open(os.path.join(cm_rows.CACHE, "bdcal_ablation.json")))
    pred_target = "--target-predicted" in sys.argv
    tag = "bdpred" if pred_target else "bdcal"
    clean = cm_rows.load(f"{tag}_clean")
    trig = cm_rows.load(f"{tag}_trig")
    print(f"loss target: {'PREDICTED label' if pred_target else 'true label'}")
    ref = clean["sal"][:N_CAL]
    sel = (trig["pred"] == cm_rows.TRIGGER_TARGET) & (trig["label"] != cm_rows.TRIGGER_TARGET)
    rows = trig["sal"][sel]
    asr_bd = info["asr_backdoored"]
    # carrying filters, two definitions, both decided by restoring clean weights:
    single = {v["filter"]: v["asr"] for v in info["single_restore"].values()}
    carry_single = sorted(f for f, a in single.items() if asr_bd - a >= 0.05)
    carry_greedy = [g["filter"] for g in info["greedy"]]
    print(f"backdoored model: clean acc {info['clean_acc_backdoored']:.3f} (healthy {info['clean_acc_healthy']:.3f}), "
          f"trigger->0 {asr_bd:.3f} (healthy {info['asr_healthy']:.3f}); {len(info['trained'])} filters trained")
    print("single restores (ASR after): " + ", ".join(f"#{f} {a:.2f}" for f, a in sorted(single.items(), key=lambda t: t[1])))
    print(f"carrying (single restore cuts ASR by >= 0.05): {carry_single}")
    print(f"carrying (greedy restores until the success is <= 0.10): {carry_greedy} "
          + " -> ".join(f"{g['asr_after']:.2f}" for g in info["greedy"]))
    print(f"{len(rows)} triggered, misclassified rows (of {len(trig['sal'])} triggered); calibration {len(ref)} clean rows")
    # diagnostic: how much each filter's saliency rises on these rows (median / reference median)
    offs = np.concatenate([[0], np.cumsum(np.bincount(L))])
    fname = lambda f: f"{names[L[f]]}[{f - offs[L[f]]}]"  # noqa: E731
    rise = np.median(rows, 0) / np.maximum(np.median(ref, 0), 1e-12)
    order = np.argsort(-rise)
    print("median rise on these rows vs the reference, top 8: "
          + ", ".join(f"{fname(f)} x{rise[f]:.0f}" for f in order[:8]))
    print("carrying filters: " + ", ".join(f"{fname(f)} x{rise[f]:.1f} (rise rank {int(np.flatnonzero(order == f)[0]) + 1})"
                                           for f in carry_single))
    scorers = calibrate(ref, L, tag)
    rng = np.random.default_rng(0)
    res = {}
    sets = {"single": carry_single, "greedy": carry_greedy}
    for sc in scorers:
        keys = sc.rank_keys(rows)
        for sname, T in sets.items():
            R = ranks(keys, np.array(T))
            m = metrics(R)
            m["MRR_ci"] = boot(R, rng, lambda r: np.mean(1.0 / r))
            m["MRR-first_ci"] = boot(R, rng, lambda r: np.mean(1.0 / r.min(1)))
            m["R@10_ci"] = boot(R, rng, lambda r: np.mean(r <= 10))
            res[(sname, sc.name)] = m
    for sname, T in sets.items():
        print(f"\n== carrying set '{sname}' ({len(T)} filters: {T}); random MRR-first ~ {np.mean(1 / np.arange(1, 401)):.3f}"
              " for one target ==")
        print(f"{'scorer':28s}  R@1    R@5    R@10   R@20   MRR [95%]             MRR-first [95%]")
        for sc in scorers:
            m = res[(sname, sc.name)]
            print(f"{sc.name:28s}" + "".join(f"  {m[f'R@{k}']:.3f}" for k in KS)
                  + f"  {fmt(m, m['MRR_ci'])}  {fmt(m, m['MRR-first_ci'], 'MRR-first')}")
    out = {"info": {k: v for k, v in info.items()}, "rows": int(len(rows)), "calibration_rows": int(len(ref)),
           "carrying": sets,
           "results": {f"{s}|{n}": m for (s, n), m in res.items()}}
    dump(out, f"cm_backdoor{'_predtarget' if pred_target else ''}.json")
    # figure: MRR-first per scorer, per carrying set
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), sharey=True)
    for ax, sname in zip(axes, sets):
        for ti, tail in enumerate(TAILS):
            xs = np.arange(len(TRANSFORMS)) + (ti - 2.5) * 0.13
            m = [res[(sname, f"{tail} | {t}")] for t in TRANSFORMS]
            y = [v["MRR-first"] for v in m]
            lo = [v["MRR-first"] - v["MRR-first_ci"][0] for v in m]
            hi = [v["MRR-first_ci"][1] - v["MRR-first"] for v in m]
            ax.errorbar(xs, y, yerr=[lo, hi], fmt="o", ms=4, label=tail)
        ax.axhline(0.9, color="k", ls=":", lw=1)
        ax.set_xticks(range(len(TRANSFORMS)))
        ax.set_xticklabels(TRANSFORMS, rotation=25, fontsize=8)
        ax.set_title(f"carrying set '{sname}' ({len(sets[sname])} filters)", fontsize=10)
    axes[0].set_ylabel("MRR-first (triggered, misclassified rows)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Backdoor present at calibration: rank of the ablation-decided carrying filters (95% bootstrap)"
                 + ("; loss target = predicted label" if pred_target else ""))
    save_fig(fig, f"cm_backdoor{'_predtarget' if pred_target else ''}.png")


# ---------------------------------------------------------------------------------------------- faults
def run_faults():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    L, names = layers()
    h = cm_rows.load("healthy_clean")
    cal_pool, _ = cm_rows.split()
    ref = h["sal"][cal_pool[:N_CAL]]
    scorers = calibrate(ref, L, "healthy")
    model_filters = cm_rows.fault_filters(__import__("train_fmnist").load_model())
    rng = np.random.default_rng(0)
    per = {}        # (kind, filter) -> {scorer: ranks [rows]}
    eff = {}
    for lay, c, f in model_filters:
        for kind in cm_rows.FAULT_KINDS:
            d = cm_rows.load(f"fault_{kind}_{f}")
            rows = d["sal"][d["trig"]] if kind == "backdoor" else d["sal"]
            eff[(kind, f)] = (float(d["heldout_acc"]), float(d["asr"]), f"{lay}[{c}]")
            per[(kind, f)] = {sc.name: ranks(sc.rank_keys(rows), np.array([f]))[:, 0] for sc in scorers}
    print("fault effects (held-out clean accuracy, trigger->0):")
    for kind in cm_rows.FAULT_KINDS:
        print(f"  {kind:8s} " + ", ".join(f"{v[2]} {v[0]:.3f}/{v[1]:.2f}" for (k, f), v in eff.items() if k == kind))
    # aggregate per kind: mean over the 12 filters of per-filter MRR and recall@10; bootstrap rows within each
    res = {}
    for kind in cm_rows.FAULT_KINDS:
        fs = [f for (k, f) in per if k == kind]
        for sc in scorers:
            Rs = [per[(kind, f)][sc.name] for f in fs]
            mrr = np.mean([np.mean(1.0 / r) for r in Rs])
            r10 = np.mean([np.mean(r <= 10) for r in Rs])
            bs_m, bs_r = [], []
            for _ in range(300):
                rr = [r[rng.integers(0, len(r), len(r))] for r in Rs]
                bs_m.append(np.mean([np.mean(1.0 / r) for r in rr]))
                bs_r.append(np.mean([np.mean(r <= 10) for r in rr]))
            per_layer = {}
            for li, ln in enumerate(names):
                fl = [i for i, f in enumerate(fs) if L[f] == li]
                per_layer[ln] = float(np.mean([np.mean(1.0 / Rs[i]) for i in fl]))
            res[(kind, sc.name)] = {"MRR": float(mrr), "MRR_ci": [float(np.percentile(bs_m, 2.5)), float(np.percentile(bs_m, 97.5))],
                                    "R@10": float(r10), "R@10_ci": [float(np.percentile(bs_r, 2.5)), float(np.percentile(bs_r, 97.5))],
                                    "MRR_per_layer": per_layer,
                                    "MRR_per_filter": {str(f): float(np.mean(1.0 / r)) for f, r in zip(fs, Rs)}}
    print(f"\n== per-row MRR / recall@10 per fault kind (mean over 12 single-filter faults, 95% bootstrap); "
          f"random {np.mean(1 / np.arange(1, 401)):.3f} / 0.025 ==")
    print(f"{'scorer':28s}" + "".join(f"{k:>34s}" for k in cm_rows.FAULT_KINDS))
    for sc in scorers:
        print(f"{sc.name:28s}" + "".join(
            f"  {res[(k, sc.name)]['MRR']:.3f} [{res[(k, sc.name)]['MRR_ci'][0]:.2f},{res[(k, sc.name)]['MRR_ci'][1]:.2f}]"
            f" / {res[(k, sc.name)]['R@10']:.3f}" for k in cm_rows.FAULT_KINDS))
    out = {"effects": {f"{k}|{f}": v for (k, f), v in eff.items()},
           "filters": [{"layer": l, "channel": c, "filter": f} for l, c, f in model_filters],
           "results": {f"{k}|{n}": v for (k, n), v in res.items()}}
    dump(out, "cm_faults.json")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), sharey=True)
    for ax, kind in zip(axes, cm_rows.FAULT_KINDS):
        for ti, tail in enumerate(TAILS):
            xs = np.arange(len(TRANSFORMS)) + (ti - 2.5) * 0.13
            m = [res[(kind, f"{tail} | {t}")] for t in TRANSFORMS]
            ax.errorbar(xs, [v["MRR"] for v in m], yerr=[[v["MRR"] - v["MRR_ci"][0] for v in m],
                                                        [v["MRR_ci"][1] - v["MRR"] for v in m]], fmt="o", ms=4, label=tail)
        ax.set_xticks(range(len(TRANSFORMS)))
        ax.set_xticklabels(TRANSFORMS, rotation=25, fontsize=8)
        ax.set_title(f"{kind}, one filter at a time (12 filters)", fontsize=10)
    axes[0].set_ylabel("per-row MRR of the faulty filter")
    axes[0].legend(fontsize=7, ncol=2)
    save_fig(fig, "cm_faults.png")


# ---------------------------------------------------------------------------------------------- shifts
def run_shifts():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    L, names = layers()
    h = cm_rows.load("healthy_clean")
    cal_pool, ev = cm_rows.split()
    ref = h["sal"][cal_pool[:N_CAL]]
    scorers = calibrate(ref, L, "healthy")
    share = np.bincount(L, minlength=len(names)) / len(L)
    deep = np.isin(np.arange(len(names)), [3, 4, 5])
    rng = np.random.default_rng(0)
    conds = [("clean", 0, None)] + [(s, i, v) for s, vs in cm_rows.SEVERITIES.items() for i, v in enumerate(vs)]
    res, d3rows = {}, {}
    for shift, si, sev in conds:
        if shift == "clean":
            rows, acc = h["sal"][ev[:1000]], float(np.mean(h["pred"][ev[:1000]] == h["label"][ev[:1000]]))
        else:
            d = cm_rows.load(f"shift_{shift}_{si}")
            rows, acc = d["sal"][:1000], float(np.mean(d["pred"][:1000] == d["label"][:1000]))
        for sc in scorers:
            top = np.argsort(-sc.rank_keys(rows), axis=1, kind="stable")[:, :20]
            lay = L[top]                                         # [rows, 20]
            per_row = np.stack([(lay == li).mean(1) for li in range(len(names))], 1)   # [rows, layers]
            d3 = per_row[:, deep].sum(1)
            d3rows[(shift, si, sc.name)] = d3
            bs = [d3[rng.integers(0, len(d3), len(d3))].mean() for _ in range(300)]
            res[(shift, si, sc.name)] = {"shares": per_row.mean(0).tolist(), "deep3": float(d3.mean()),
                                         "deep3_ci": [float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5))],
                                         "accuracy": acc, "severity": sev}
        print(f"{shift} {sev}: accuracy {acc:.3f}", flush=True)
    print(f"\n== deep3 share (conv4+conv5+down; filter share {share[deep].sum():.2f}) of per-row top-20 ==")
    hdr = [f"{s}:{v}" for s, _, v in conds]
    print(f"{'scorer':28s}" + "".join(f"{c:>17s}" for c in hdr))
    for sc in scorers:
        print(f"{sc.name:28s}" + "".join(f"{res[(s, i, sc.name)]['deep3']:17.3f}" for s, i, _ in conds))
    # layer-share deviation: total variation distance from the filter shares, averaged over shifted conditions
    print("\n== mean over the 12 shifted conditions: deep3 share, and total-variation distance of the layer "
          "shares from the filter shares ==")
    summ = {}
    for sc in scorers:
        d3 = np.mean([res[(s, i, sc.name)]["deep3"] for s, i, _ in conds[1:]])
        tv = np.mean([0.5 * np.abs(np.array(res[(s, i, sc.name)]["shares"]) - share).sum() for s, i, _ in conds[1:]])
        summ[sc.name] = {"deep3_mean_shifted": float(d3), "tv_mean_shifted": float(tv)}
        print(f"{sc.name:28s} deep3 {d3:.3f}  TV {tv:.3f}")
    print("\n== deep3 share minus POT | raw's, paired over rows (mean [95% bootstrap]); + = deeper than POT ==")
    print(f"{'scorer':28s}" + "".join(f"{c:>19s}" for c in hdr[1:]))
    for sc in scorers:
        cells = []
        for s_, i, _ in conds[1:]:
            dd = d3rows[(s_, i, sc.name)] - d3rows[(s_, i, "POT | raw")]
            bs = [dd[rng.integers(0, len(dd), len(dd))].mean() for _ in range(300)]
            res[(s_, i, sc.name)]["deep3_minus_pot"] = float(dd.mean())
            res[(s_, i, sc.name)]["deep3_minus_pot_ci"] = [float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5))]
            cells.append(f"{dd.mean():+.3f} [{np.percentile(bs, 2.5):+.2f},{np.percentile(bs, 97.5):+.2f}]")
        summ[sc.name]["conditions_deeper_than_pot"] = int(sum(res[(s_, i, sc.name)]["deep3_minus_pot_ci"][0] > 0
                                                             for s_, i, _ in conds[1:]))
        print(f"{sc.name:28s}" + "".join(f"{c:>19s}" for c in cells) + f"  deeper (CI>0) in {summ[sc.name]['conditions_deeper_than_pot']}/12")
    out = {"filter_share": share.tolist(), "layers": names,
           "results": {f"{s}|{sev}|{n}": v for (s, i, n), v in res.items() for sev in [dict((c[0] + str(c[1]), c[2]) for c in conds)[s + str(i)]]},
           "summary": summ}
    dump(out, "cm_depth.json")
    # figure: deep3 per condition for a selection of scorers
    pick = ["z | raw", "POT | raw", "POT | row/mean", "POT | layer ratio", "z | layer logres", "POT | layer logres",
            "POT-two | layer logres", "z | layer rank"]
    fig, ax = plt.subplots(figsize=(13, 4.5))
    xs = np.arange(len(conds))
    for pi, n in enumerate(pick):
        if not any(sc.name == n for sc in scorers):
            continue
        m = [res[(s, i, n)] for s, i, _ in conds]
        ax.errorbar(xs + (pi - len(pick) / 2) * 0.08, [v["deep3"] for v in m],
                    yerr=[[v["deep3"] - v["deep3_ci"][0] for v in m], [v["deep3_ci"][1] - v["deep3"] for v in m]],
                    fmt="o-", ms=3, lw=0.8, label=n)
    ax.axhline(share[deep].sum(), color="k", ls=":", lw=1, label="filter share")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{s}\n{v}" if v is not None else s for s, _, v in conds], fontsize=7)
    ax.set_ylabel("deep3 share of per-row top-20")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("Depth bias under shift (95% bootstrap over rows)")
    save_fig(fig, "cm_depth.png")


# ---------------------------------------------------------------------------------------------- cost
RESNET50_WIDTHS = ([64] + [64, 64, 256, 256] + [64, 64, 256] * 2 + [128, 128, 512, 512] + [128, 128, 512] * 3
                   + [256, 256, 1024, 1024] + [256, 256, 1024] * 5 + [512, 512, 2048, 2048] + [512, 512, 2048] * 2)


def run_cost():
    L = np.concatenate([np.full(w, i) for i, w in enumerate(RESNET50_WIDTHS)])
    K = len(L)
    rng = np.random.default_rng(0)
    ref = rng.gamma(2.0, 1.0, (200, K)) * rng.gamma(2.0, 1.0, (200, 1))
    rows = rng.gamma(2.0, 1.0, (256, K)) * rng.gamma(2.0, 1.0, (256, 1))
    print(f"ResNet-50: {len(RESNET50_WIDTHS)} conv layers, K = {K} filters; numpy, one thread, batch of 256 rows")
    for kind in TRANSFORMS:
        tr = Transform(kind, ref, L)
        tr.apply(rows[:8])
        t0 = time.perf_counter()
        for _ in range(3):
            tr.apply(rows)
        dt = (time.perf_counter() - t0) / 3 / len(rows)
        print(f"  {kind:14s} {dt * 1e3:7.3f} ms/row  {dt / K * 1e9:6.1f} ns/value")


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    t0 = time.time()
    for w in ["backdoor", "faults", "shifts", "cost"]:
        if what in (w, "all"):
            globals()["run_" + w]()
    print(f"runtime {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
