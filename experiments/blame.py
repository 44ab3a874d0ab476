#!/usr/bin/env python3
"""Taylor blame + pooled z-score: which filters carry a backdoor that was present at calibration (issue 13).

    python3 experiments/cm_rows.py healthy shifts     # once: the plain-saliency rows of the healthy model
    python3 experiments/blame.py rows                 # ~10 min: 5 backdoored models (seeds 11-15; seed 11 is
                                                      # cm_rows' backdoor), ablation, Taylor + saliency rows;
                                                      # Taylor rows of the healthy model under the 12 shifts
    python3 experiments/blame.py faults               # ~10 min: Taylor rows of cm_rows' 36 single-filter faults
                                                      # (needs `cm_rows.py faults` done: it compares with those)
    python3 experiments/blame.py daemon               # ~5 min: the same rows through a real saliencyd over ZeroMQ
                                                      # (calibration, then triggered rows one at a time, each
                                                      # asked `top --by pooled-zscore`; it keeps learning)
    python3 experiments/blame.py report               # ~1 min -> docs/results/blame_backdoor.png, blame_depth.png,
                                                      # blame.json, and the product check (saliencyctl analyze)

Quantities (clients/python/saliency_tap, docs/method.md):
  saliency  s_j = mean |dL/dW| over filter j's weights (the paper's parameter saliency)
  taylor    b_j = max(0, sum_{w in filter j} w * dL/dw): the loss the prediction would save, to first order,
            if filter j were zeroed (its "blame"), in loss units shared by every filter.
Scorers on each quantity, fitted on the 4,000 clean calibration rows of the SAME (backdoored) model:
  pooled-zscore  (x_j - mu_j) / sigma, sigma^2 = mean_j var_j (the daemon's `--by pooled-zscore`)
  z              (x_j - mu_j) / sd_j;   POT  common.POT (0.9 quantile, GPD);   value  x_j itself (no reference)
  z | layer rank (saliency only): the best plain-saliency scorer of common_mode.py backdoor
The carrying filters are decided by ablation (restoring one trained filter's pre-backdoor weights), not by
which filters were trained: "single" = every trained filter whose restoration alone lowers the trigger's
success by >= 0.05; "greedy" = restore the most effective filter until the success is <= 0.10.
Scored rows: triggered EVAL_POOL images the backdoored model sends to class 0 (true label != 0), loss against
the true label. MRR-first = mean over rows of 1/(best rank of any carrying filter), ties pessimistic; 95%
percentile bootstrap over rows (1,000 resamples; the calibration is held fixed).
Depth under shift: share of conv4 + conv5 + down among each row's top 20 (1,000 rows per condition; the same
images for both quantities, so differences are paired by row), pooled-zscore on Taylor vs POT on saliency.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import FIG_DIR, POT, ROOT, ZScore, feed, layer_of_filter, save_fig  # noqa: E402
import cm_rows  # noqa: E402
from cm_rows import (BD_CAL_PER_LAYER, BD_CAL_STEPS, CACHE, TRIGGER_TARGET, attack_success, offsets, split,  # noqa: E402
                     stamp_trigger, to_input, train_backdoor)
from saliency_tap import SaliencyComputer  # noqa: E402
from train_fmnist import load_fmnist, load_model  # noqa: E402

SEEDS = [11, 12, 13, 14, 15]
N_CAL = 4000
N_ROWS = 1000
B = 1000
DEEP = [3, 4, 5]          # conv4, conv5, down


def rows_of(model, x01, target, quantity, bs=200):
    comp = SaliencyComputer(model, quantity=quantity)
    xt = to_input(x01)
    sal, pred = [], []
    for i in range(0, len(xt), bs):
        b = comp.compute(xt[i:i + bs], torch.from_numpy(np.asarray(target[i:i + bs], np.int64)))
        sal.append(b.saliency)
        pred.append(b.predicted)
    return np.concatenate(sal).astype(np.float32), np.concatenate(pred)


def npz(name):
    return os.path.join(CACHE, f"blame_{name}.npz")


def backdoored(model, seed):
    """The backdoored model of `seed`: 4 filters per layer chosen by default_rng(seed), fine-tuned together
    (cm_rows' recipe, 400 steps). Seed 11 is cm_rows' `backdoor` stage (same recipe, same cache file)."""
    offs, names = offsets(model)
    rng = np.random.default_rng(seed)
    trained = [(n, int(c)) for n in names
               for c in rng.choice(getattr(model, n).weight.shape[0], BD_CAL_PER_LAYER, replace=False)]
    mpath = os.path.join(CACHE, "bdcal_model.pt" if seed == 11 else f"blame_bd{seed}_model.pt")
    if os.path.exists(mpath):
        bd = copy.deepcopy(model)
        bd.load_state_dict(torch.load(mpath, weights_only=True))
        return bd.eval(), trained, offs
    t0 = time.time()
    bd = train_backdoor(model, trained, BD_CAL_STEPS, seed=seed)
    os.makedirs(CACHE, exist_ok=True)
    torch.save(bd.state_dict(), mpath)
    print(f"  seed {seed}: backdoor fine-tune of {len(trained)} filters, {time.time() - t0:.0f} s", flush=True)
    return bd, trained, offs


def stage_rows():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_model()
    xte, yte = load_fmnist("test")
    cal, ev = split()
    for seed in SEEDS:
        bd, trained, offs = backdoored(model, seed)
        apath = os.path.join(CACHE, "bdcal_ablation.json" if seed == 11 else f"blame_bd{seed}_ablation.json")
        if not os.path.exists(apath):
            cm_rows.ablate(model, bd, trained, offs, xte, yte, ev[1000:], out=apath)
        for q in ["saliency", "taylor"]:
            name = f"bd{seed}_{q}"
            if os.path.exists(npz(name)):
                continue
            t0 = time.time()
            c, cp = rows_of(bd, xte[cal[:N_CAL]] / 255.0, yte[cal[:N_CAL]], q)
            ti = ev[:N_ROWS]
            t, tp = rows_of(bd, stamp_trigger(xte[ti]) / 255.0, yte[ti], q)
            np.savez(npz(name), cal=c, trig=t, trig_pred=tp, trig_label=yte[ti])
            print(f"  cached {name}: {time.time() - t0:.0f} s", flush=True)
    # Taylor rows of the healthy model: calibration, clean and the 12 shifted conditions (cm_rows' images)
    if not os.path.exists(npz("shifts_taylor")):
        t0 = time.time()
        out = {}
        out["cal"], _ = rows_of(model, xte[cal[:N_CAL]] / 255.0, yte[cal[:N_CAL]], "taylor")
        x = xte[ev[:N_ROWS]] / 255.0
        out["clean"], _ = rows_of(model, x, yte[ev[:N_ROWS]], "taylor")
        for shift, sevs in cm_rows.SEVERITIES.items():
            for si, sev in enumerate(sevs):
                xs = cm_rows.apply_shift(xte[ev] / 255.0, shift, sev)[:N_ROWS].astype(np.float32)
                out[f"{shift}_{si}"], _ = rows_of(model, xs, yte[ev[:N_ROWS]], "taylor")
        np.savez(npz("shifts_taylor"), **out)
        print(f"  cached shifts_taylor: {time.time() - t0:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------------ scorers
class PooledZ:
    """(x - mu_j) / sigma, sigma^2 = mean_j var_j (ddof 1), 1 when below 1e-14: the daemon's pooled-zscore."""

    def __init__(self, ref):
        ref = np.asarray(ref, np.float64)
        self.mu = ref.mean(0)
        s = float(np.sqrt(ref.var(0, ddof=1).mean()))
        self.sd = 1.0 if s < 1e-14 else s

    def rank_keys(self, rows):
        return (np.asarray(rows, np.float64) - self.mu) / self.sd


class Value:
    def __init__(self, ref):
        pass

    def rank_keys(self, rows):
        return np.asarray(rows, np.float64)


class LayerRankZ:
    def __init__(self, ref, L):
        from scorers import Transform
        self.tr = Transform("layer rank", ref, L)
        self.z = ZScore(self.tr.apply(ref))

    def rank_keys(self, rows):
        return self.z.rank_keys(self.tr.apply(rows))


def scorers_for(q, ref, L):
    out = {f"pooled-zscore | {q}": PooledZ(ref), f"z | {q}": ZScore(ref), f"POT | {q}": POT(ref),
           f"value | {q}": Value(ref)}
    if q == "saliency":
        out["z | layer rank | saliency"] = LayerRankZ(ref, L)
    return out


def ranks(keys, targets):
    kt = keys[:, targets]
    return (keys[:, None, :] >= kt[:, :, None]).sum(2)       # ties pessimistic


def boot(x, rng):
    n = len(x)
    v = np.array([x[rng.integers(0, n, n)].mean() for _ in range(B)])
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def carrying(seed):
    apath = os.path.join(CACHE, "bdcal_ablation.json" if seed == 11 else f"blame_bd{seed}_ablation.json")
    info = json.load(open(apath))
    asr = info["asr_backdoored"]
    single = sorted(v["filter"] for v in info["single_restore"].values() if asr - v["asr"] >= 0.05)
    greedy = [g["filter"] for g in info["greedy"]]
    return info, {"single": single, "greedy": greedy}


def report_backdoor(L, names):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(0)
    res, per_seed = {}, {}
    offs = np.concatenate([[0], np.cumsum(np.bincount(L))])
    fname = lambda f: f"{names[L[f]]}[{f - offs[L[f]]}]"  # noqa: E731
    for seed in SEEDS:
        info, sets = carrying(seed)
        print(f"\n== seed {seed}: clean acc {info['clean_acc_backdoored']:.3f} (healthy {info['clean_acc_healthy']:.3f}), "
              f"trigger->0 {info['asr_backdoored']:.3f}; trained {len(info['trained'])}; carrying single "
              f"{[fname(f) for f in sets['single']]}, greedy {[fname(f) for f in sets['greedy']]} -> "
              + " -> ".join(f"{g['asr_after']:.2f}" for g in info["greedy"]))
        per_seed[seed] = {"info": {k: info[k] for k in ("asr_backdoored", "asr_healthy", "clean_acc_backdoored",
                                                        "clean_acc_healthy", "greedy", "single_restore", "trained")},
                          "carrying": sets}
        for q in ["saliency", "taylor"]:
            d = np.load(npz(f"bd{seed}_{q}"))
            sel = (d["trig_pred"] == TRIGGER_TARGET) & (d["trig_label"] != TRIGGER_TARGET)
            rows = d["trig"][sel].astype(np.float64)
            per_seed[seed]["rows"] = int(sel.sum())
            for sname, sc in scorers_for(q, d["cal"].astype(np.float64), L).items():
                keys = sc.rank_keys(rows)
                top1 = np.argmax(keys, 1)
                for setname, T in sets.items():
                    best = ranks(keys, np.array(T)).min(1)
                    m = {"MRR-first": float(np.mean(1 / best)), "R@1": float(np.mean(best == 1)),
                         "R@10": float(np.mean(best <= 10))}
                    m["MRR-first_ci"] = boot(1 / best, rng)
                    m["inv_best"] = (1 / best)       # for the pooled-over-seeds figure; dropped from the JSON
                    res[(seed, setname, sname)] = m
                u, c = np.unique(top1, return_counts=True)
                per_seed[seed].setdefault("top1", {})[sname] = {fname(int(f)): int(n) for f, n in
                                                                sorted(zip(u, c), key=lambda t: -t[1])[:5]}
    snames = list(scorers_for("saliency", np.zeros((2, len(L))), L)) + list(scorers_for("taylor", np.zeros((2, len(L))), L))
    pooled = {}
    for setname in ["single", "greedy"]:
        print(f"\n== MRR-first [95%] / recall@1, carrying set '{setname}'; random for one target "
              f"{np.mean(1 / np.arange(1, len(L) + 1)):.3f} ==")
        print(f"{'scorer':28s}" + "".join(f"{'seed ' + str(s):>26s}" for s in SEEDS) + f"{str(len(SEEDS)) + ' seeds':>26s}")
        for sn in snames:
            allv = np.concatenate([res[(s, setname, sn)]["inv_best"] for s in SEEDS])
            ci = boot(allv, rng)
            pooled[(setname, sn)] = {"MRR-first": float(allv.mean()), "MRR-first_ci": ci,
                                     "seeds_at_least_0.9": int(sum(res[(s, setname, sn)]["MRR-first"] >= 0.9 for s in SEEDS))}
            cells = [f"{res[(s, setname, sn)]['MRR-first']:.3f} [{res[(s, setname, sn)]['MRR-first_ci'][0]:.2f},"
                     f"{res[(s, setname, sn)]['MRR-first_ci'][1]:.2f}] {res[(s, setname, sn)]['R@1']:.2f}" for s in SEEDS]
            print(f"{sn:28s}" + "".join(f"{c:>26s}" for c in cells) + f"{allv.mean():>12.3f} [{ci[0]:.2f},{ci[1]:.2f}]")
    for seed in SEEDS:
        print(f"seed {seed}: most frequent top-1 filters, pooled-zscore | taylor: {per_seed[seed]['top1']['pooled-zscore | taylor']}")
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), sharey=True)
    for ax, setname in zip(axes, ["single", "greedy"]):
        xs = np.arange(len(snames))
        for si, s in enumerate(SEEDS + ["all"]):
            if s == "all":
                m = [pooled[(setname, sn)] for sn in snames]
            else:
                m = [res[(s, setname, sn)] for sn in snames]
            y = [v["MRR-first"] for v in m]
            ax.errorbar(xs + (si - len(SEEDS) / 2) * 0.12, y, yerr=[[v["MRR-first"] - v["MRR-first_ci"][0] for v in m],
                                                          [v["MRR-first_ci"][1] - v["MRR-first"] for v in m]],
                        fmt="o" if s != "all" else "s", ms=4, label=f"seed {s}" if s != "all" else f"{len(SEEDS)} seeds pooled")
        ax.axhline(0.9, color="k", ls=":", lw=1)
        ax.set_xticks(xs)
        ax.set_xticklabels(snames, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"carrying set '{setname}' (ablation)", fontsize=10)
    axes[0].set_ylabel("MRR-first, triggered misclassified rows")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Backdoor present at calibration, {len(SEEDS)} backdoored models: Taylor blame vs parameter saliency "
                 "(95% bootstrap)")
    save_fig(fig, "blame_backdoor.png")
    for v in res.values():
        v.pop("inv_best")
    return ({f"{s}|{setname}|{sn}": v for (s, setname, sn), v in res.items()},
            {f"{setname}|{sn}": v for (setname, sn), v in pooled.items()}, per_seed)


def report_depth(L, names):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(1)
    cal, ev = split()
    h = cm_rows.load("healthy_clean")
    tay = np.load(npz("shifts_taylor"))
    pot = POT(h["sal"][cal[:N_CAL]].astype(np.float64))
    pz = PooledZ(tay["cal"].astype(np.float64))
    share = np.bincount(L) / len(L)
    deep = np.isin(L, DEEP)

    def d3(keys):
        top = np.argsort(-keys, axis=1, kind="stable")[:, :20]
        return deep[top].mean(1)

    def tv(keys):
        """Total-variation distance of the six layer shares of the top-20 picks from the filter shares."""
        top = np.argsort(-keys, axis=1, kind="stable")[:, :20]
        shares = np.bincount(L[top].ravel(), minlength=len(share)) / top.size
        return float(0.5 * np.abs(shares - share).sum()), shares.tolist()

    conds = [("clean", None)] + [(f"{s}_{i}", v) for s, vs in cm_rows.SEVERITIES.items() for i, v in enumerate(vs)]
    out = {}
    print(f"\n== deep3 share (conv4+conv5+down; filter share {share[DEEP].sum():.2f}) of per-row top-20, 1,000 rows ==")
    print(f"{'condition':16s} {'POT | saliency':>16s} {'pooled-z | taylor':>18s}   paired difference [95%]   TV POT vs pooled-z"
          f" (layers {' '.join(names)}; filter shares " + " ".join(f"{x:.2f}" for x in share) + ")")
    for c, sev in conds:
        srows = h["sal"][ev[:N_ROWS]] if c == "clean" else cm_rows.load(f"shift_{c}")["sal"][:N_ROWS]
        ka, kb = pot.rank_keys(srows.astype(np.float64)), pz.rank_keys(tay[c].astype(np.float64))
        a, b = d3(ka), d3(kb)
        (tva, sha), (tvb, shb) = tv(ka), tv(kb)
        diff = b - a
        out[c] = {"severity": sev, "pot_saliency": float(a.mean()), "pooled_taylor": float(b.mean()),
                  "diff": float(diff.mean()), "diff_ci": boot(diff, rng), "tv_pot_saliency": tva, "tv_pooled_taylor": tvb,
                  "shares_pot_saliency": sha, "shares_pooled_taylor": shb}
        print(f"{c:16s} {a.mean():16.3f} {b.mean():18.3f}   {diff.mean():+.3f} [{out[c]['diff_ci'][0]:+.2f},{out[c]['diff_ci'][1]:+.2f}]"
              f"   TV {tva:.3f} vs {tvb:.3f}; layer shares pooled-z|taylor " + " ".join(f"{x:.2f}" for x in shb))
    shifted = [c for c, _ in conds[1:]]
    deeper = sum(out[c]["diff_ci"][0] > 0 for c in shifted)
    print(f"pooled-zscore | taylor is deeper than POT | saliency (CI above 0) in {deeper}/12 shifted conditions; "
          f"mean deep3 {np.mean([out[c]['pooled_taylor'] for c in shifted]):.3f} vs {np.mean([out[c]['pot_saliency'] for c in shifted]):.3f}; "
          f"mean TV from the filter shares {np.mean([out[c]['tv_pooled_taylor'] for c in shifted]):.3f} vs "
          f"{np.mean([out[c]['tv_pot_saliency'] for c in shifted]):.3f}")
    fig, ax = plt.subplots(figsize=(12, 4))
    xs = np.arange(len(conds))
    ax.plot(xs, [out[c]["pot_saliency"] for c, _ in conds], "o-", label="POT | saliency")
    ax.plot(xs, [out[c]["pooled_taylor"] for c, _ in conds], "s-", label="pooled-zscore | taylor")
    ax.axhline(share[DEEP].sum(), color="k", ls=":", lw=1, label="filter share")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{c}\n{v}" if v is not None else c for c, v in conds], fontsize=7)
    ax.set_ylabel("deep3 share of per-row top-20")
    ax.legend(fontsize=8)
    ax.set_title("Depth under shift: Taylor blame (pooled z) vs parameter saliency (POT), healthy model")
    save_fig(fig, "blame_depth.png")
    return out, deeper


def product_check(L):
    """The daemon's own scorer on the same rows: `saliencyctl analyze --by pooled-zscore --top 1` (the
    FilterBank code the daemon runs) must pick the same top-1 filter as the numpy PooledZ on every row."""
    exe = os.environ.get("SALIENCYCTL") or os.path.join(ROOT, ".build", "debug", "saliencyctl")
    if not os.path.exists(exe):
        subprocess.run(["swift", "build", "--product", "saliencyctl"], cwd=ROOT, check=True)
    _, schema, _ = feed("reference")
    d = np.load(npz("bd11_taylor"))
    sel = (d["trig_pred"] == TRIGGER_TARGET) & (d["trig_label"] != TRIGGER_TARGET)
    with tempfile.TemporaryDirectory() as tmp:
        for n, a in [("ref", d["cal"]), ("in", d["trig"][sel])]:
            np.save(os.path.join(tmp, n + ".npy"), a.astype(np.float32))
        with open(os.path.join(tmp, "schema.json"), "w") as f:
            json.dump(schema, f)
        p = subprocess.run([exe, "analyze", "--schema", os.path.join(tmp, "schema.json"), "--reference",
                            os.path.join(tmp, "ref.npy"), "--input", os.path.join(tmp, "in.npy"), "--by", "pooled-zscore",
                            "--top", "1", "--json"], capture_output=True, text=True, check=True)
    got = [json.loads(line)["top"][0]["filter"] for line in p.stdout.splitlines() if line.strip()]
    want = np.argmax(PooledZ(d["cal"].astype(np.float64)).rank_keys(d["trig"][sel].astype(np.float64)), 1)
    agree = float(np.mean(np.array(got) == want))
    print(f"\nproduct check: saliencyctl analyze --by pooled-zscore picks numpy's top-1 filter on {agree:.3f} of "
          f"{len(got)} seed-11 rows")
    return {"rows": len(got), "top1_agreement": agree}


def stage_faults():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_model()
    while not all(cm_rows.have(f"taylor_fault_{k}_{f}") for _, _, f in cm_rows.fault_filters(model) for k in cm_rows.FAULT_KINDS):
        cm_rows.stage_faults(model, quantity="taylor")


def report_faults(L, names):
    """Faults planted after calibration, one filter and one kind at a time (cm_rows' 36 models): per-row MRR
    of the faulty filter, mean over the 12 filters of each kind, for Taylor and saliency scorers."""
    model = load_model()
    cal, _ = split()
    rng = np.random.default_rng(2)
    h = cm_rows.load("healthy_clean")
    tay = np.load(npz("shifts_taylor"))
    fitted = {**scorers_for("saliency", h["sal"][cal[:N_CAL]].astype(np.float64), L),
              **scorers_for("taylor", tay["cal"].astype(np.float64), L)}
    out = {}
    print("\n== faults after calibration, one filter at a time: per-row MRR of the faulty filter (mean over 12 filters "
          "[95% bootstrap over rows]) ==")
    print(f"{'scorer':28s}" + "".join(f"{k:>22s}" for k in cm_rows.FAULT_KINDS))
    for sn, sc in fitted.items():
        q = sn.rsplit("| ", 1)[1]
        cells = []
        for kind in cm_rows.FAULT_KINDS:
            invs = []
            for _, _, f in cm_rows.fault_filters(model):
                d = cm_rows.load(("taylor_" if q == "taylor" else "") + f"fault_{kind}_{f}")
                rows = (d["sal"][d["trig"]] if kind == "backdoor" else d["sal"]).astype(np.float64)
                invs.append(1 / ranks(sc.rank_keys(rows), np.array([f]))[:, 0])
            m = float(np.mean([v.mean() for v in invs]))
            bs = [np.mean([v[rng.integers(0, len(v), len(v))].mean() for v in invs]) for _ in range(200)]
            out[f"{kind}|{sn}"] = {"MRR": m, "MRR_ci": [float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5))]}
            cells.append(f"{m:.3f} [{out[f'{kind}|{sn}']['MRR_ci'][0]:.2f},{out[f'{kind}|{sn}']['MRR_ci'][1]:.2f}]")
        print(f"{sn:28s}" + "".join(f"{c:>22s}" for c in cells))
    return out


def stage_daemon():
    """Per seed: a fresh saliencyd (experiments/daemon_localization.run_daemon) calibrated on the 4,000 clean
    Taylor rows of the backdoored model, then fed the triggered misclassified rows one at a time; after each,
    `{"op": "top", "k": K, "window": "latest", "by": "pooled-zscore"}`. The daemon absorbs every non-extreme
    row into its moments, as deployed, so the carriers' means rise as triggered rows arrive (conservative).
    Written to the cache (blame_daemon.json) and merged into blame.json by `report`."""
    import daemon_localization as dl
    _, schema, _ = feed("reference")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SEEDS:
            _, sets = carrying(seed)
            d = np.load(npz(f"bd{seed}_taylor"))
            sel = (d["trig_pred"] == TRIGGER_TARGET) & (d["trig_label"] != TRIGGER_TARGET)
            t0 = time.time()
            R, _, _ = dl.run_daemon(tmp, "upper", "none", "pooled-zscore", d["cal"].astype(np.float32),
                                    d["trig"][sel].astype(np.float32), schema, sets["single"], name=f"bd{seed}")
            best = R.min(1)
            greedy_idx = [sets["single"].index(f) for f in sets["greedy"] if f in sets["single"]]
            res = {"rows": int(len(best)), "MRR-first": float(np.mean(1 / best)), "R@1": float(np.mean(best == 1)),
                   "MRR-first_ci": boot(1 / best, np.random.default_rng(seed))}
            if len(greedy_idx) == len(sets["greedy"]):
                bg = R[:, greedy_idx].min(1)
                res["greedy"] = {"MRR-first": float(np.mean(1 / bg)), "R@1": float(np.mean(bg == 1))}
            out[str(seed)] = res
            print(f"daemon, seed {seed}: MRR-first {res['MRR-first']:.3f} [{res['MRR-first_ci'][0]:.2f},"
                  f"{res['MRR-first_ci'][1]:.2f}], R@1 {res['R@1']:.3f} over {len(best)} rows "
                  f"(greedy set: {res.get('greedy')}); {time.time() - t0:.0f} s", flush=True)
    with open(os.path.join(CACHE, "blame_daemon.json"), "w") as f:
        json.dump(out, f)


def stage_report():
    _, schema, _ = feed("reference")
    L = layer_of_filter(schema)
    names = [l["name"] for l in schema["layers"]]
    t0 = time.time()
    res, pooled, per_seed = report_backdoor(L, names)
    depth, deeper = report_depth(L, names)
    faults = report_faults(L, names) if all(cm_rows.have(f"taylor_fault_{k}_{f}") for _, _, f in
                                            cm_rows.fault_filters(load_model()) for k in cm_rows.FAULT_KINDS) else None
    prod = product_check(L)
    dpath = os.path.join(CACHE, "blame_daemon.json")
    daemon = json.load(open(dpath)) if os.path.exists(dpath) else None
    out = {"daemon": daemon, "faults": faults, "seeds": SEEDS, "per_seed": {str(k): v for k, v in per_seed.items()}, "results": res, "pooled": pooled,
           "depth": depth, "depth_deeper_than_pot": int(deeper), "product_check": prod}
    from common_mode import dump
    dump(out, "blame.json")
    print(f"report: {time.time() - t0:.0f} s")


def main():
    what = sys.argv[1:] or ["rows", "report"]
    for w in what:
        {"rows": stage_rows, "faults": stage_faults, "daemon": stage_daemon, "report": stage_report}[w]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
