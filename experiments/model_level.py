#!/usr/bin/env python3
"""Model-level detection (issue 13 item 3): saliency-count CUSUM vs output-only monitors, matched false alarms.

    for s in 0 1 2; do python3 experiments/model_level.py --seed $s; done   # ~3.5 min each (cached under /tmp)
    python3 experiments/model_level.py --report   # aggregates the cached seeds -> docs/results/cm_detect.png/json
    python3 experiments/model_level.py --null-check   # ~1 min: cross-fitted vs in-sample vs held-out null rate
    (add --with-ratio to --seed/--report to include the per-layer ratio count: cm_detect_ratio.png/json)

Per seed: calibration = 4,000 clean rows of the healthy model (drawn from CAL_POOL), then a stream of 2,000
other clean rows followed by the onset: 1,000 shifted rows (random 1,000 of the 2,000 EVAL_POOL images at
that shift and severity) or the 500 rows of one single-filter fault model (in random order; backdoor
faults: half the rows carry the trigger). Every monitor runs from the first clean row; an alarm before the
onset is a false alarm (the monitor restarts); the delay is rows from onset to the first alarm at or after
it (> 1,000 / > 500 = missed). False alarms per 10,000 clean rows are counted on ONE stream per seed of the
6,000 distinct clean rows not used for calibration (the 4,000 others of CAL_POOL + the 2,000 EVAL_POOL images,
healthy model, shuffled); the 2,000-row clean prefix of the detection streams is the same for every condition
of a seed, so its false alarms are reported once per seed, not per condition.

Monitors (thresholds of ALL of them set by bootstrap of their in-control statistic to an average run
length of 20,000 rows, so their false-alarm rates are matched):
  sal-count raw      saliencyd today: per row the number of filters whose POT p-value (upper tail, raw
                     saliency, common.POT fitted on the calibration rows) is below q = 1e-4; Bernoulli CUSUM
                     on 1{count >= r} with r, pi0, pi1 chosen by ModelShiftRule's rule (max_null_rate 0.5,
                     Clopper-Pearson 0.999, shift_ratio 2). Null rate estimated by 2-fold CROSS-FITTING on
                     the calibration rows (fit on one half, count on the other) -> no burn-in after calibration.
  sal-count <T>      the same with transform T (layer logres, layer ratio) and two-sided POT (min of the two
                     tail p-values < q).
  CUSUM 1-conf       one-sided CUSUM on 1 - max softmax, reference k = mean + 0.5 sd of the calibration rows.
  CUSUM entropy      the same on the predictive entropy.
  KS 1-conf, KS entropy  two-sided KS distance of the last 200 rows vs the calibration rows, every 10 rows.
  CUSUM mean log s   (extra) one-sided CUSUM on the row's mean log saliency: the common mode itself.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cm_rows  # noqa: E402
from common import FIG_DIR, POT, feed, layer_of_filter, save_fig  # noqa: E402
from scorers import Transform  # noqa: E402

Q = 1e-4
ARL = 20000
KS_W, KS_EVERY = 200, 10
N_CAL, N_CLEAN = 4000, 2000
WITH_RATIO = "--with-ratio" in sys.argv     # adds the per-layer ratio count (separate cache and outputs)
SAL_TRANSFORMS = ["raw", "layer logres"] + (["layer ratio"] if WITH_RATIO else [])
TAG = "_ratio" if WITH_RATIO else ""


def extreme_counts(ref, rows, L, kind, two_sided):
    tr = Transform(kind, ref, L)
    xr, x = tr.apply(ref), tr.apply(rows)
    up = POT(xr)
    s_up, a_up = up.scores(x)
    ext = a_up & (s_up > -np.log10(Q))
    if two_sided:
        lo = POT(-xr)
        s_lo, a_lo = lo.scores(-x)
        ext |= a_lo & (s_lo > -np.log10(Q))
    return ext.sum(1)


def daemon_rule(counts, max_null_rate=0.5, confidence=0.999, shift_ratio=2.0):
    """ModelShiftRule.calibrate on a histogram of counts: (r, pi0, pi1)."""
    n = len(counts)
    r = 1
    while np.mean(counts >= r) > max_null_rate and r < 256:
        r += 1
    k = int(np.sum(counts >= r))
    pi0 = 1.0 if k == n else float(stats.beta.ppf(confidence, k + 1, n - k))
    pi0 = max(pi0, 1e-12)
    pi1 = min(shift_ratio * pi0, (1 + pi0) / 2)
    return r, pi0, pi1


def bern_incr(x, pi0, pi1):
    return np.where(x, np.log(pi1 / pi0), np.log((1 - pi1) / (1 - pi0)))


def cusum_threshold(incr_sampler, rng, M=200, T=25000):
    """Smallest h on a grid whose bootstrap false-alarm rate (with restart) is <= 1/ARL."""
    H = np.geomspace(0.5, 200, 80)
    S = np.zeros((M, 1)) + np.zeros((1, len(H)))
    alarms = np.zeros(len(H))
    for _ in range(T):
        S = np.maximum(0.0, S + incr_sampler(rng, M)[:, None])
        hit = S > H
        alarms += hit.sum(0)
        S[hit] = 0.0
    rate = alarms / (M * T)
    ok = np.flatnonzero(rate <= 1.0 / ARL)
    return float(H[ok[0]]) if len(ok) else float(H[-1])


def cusum_run(incr, h, onset):
    """Return (false alarms before onset, delay from onset or None)."""
    S, fa = 0.0, 0
    for t, v in enumerate(incr):
        S = max(0.0, S + v)
        if S > h:
            if t < onset:
                fa += 1
                S = 0.0
            else:
                return fa, t - onset + 1
    return fa, None


def ks_stats(stream, ref_sorted):
    """D of the trailing window ending at rows KS_W-1, KS_W-1+KS_EVERY, ... Returns (end indices, D)."""
    n = len(ref_sorted)
    F0 = np.searchsorted(ref_sorted, stream, side="right") / n
    ends = np.arange(KS_W - 1, len(stream), KS_EVERY)
    win = np.lib.stride_tricks.sliding_window_view(F0, KS_W)[ends - KS_W + 1]
    win = np.sort(win, axis=1)
    i = np.arange(1, KS_W + 1) / KS_W
    D = np.maximum((i - win).max(1), (win - (i - 1 / KS_W)).max(1))
    return ends, D


def ks_alarms(ends, D, d):
    """Alarm times with restart (the window refills after an alarm)."""
    out, next_ok = [], -1
    for e, v in zip(ends, D):
        if e >= next_ok and v > d:
            out.append(e)
            next_ok = e + KS_W
    return out


def ks_threshold(ref_vals, rng, T=1_000_000):
    ref_sorted = np.sort(ref_vals)
    stream = rng.choice(ref_vals, T)
    ends, D = ks_stats(stream, ref_sorted)
    for d in np.linspace(0.05, 0.6, 111):
        if len(ks_alarms(ends, D, d)) / T <= 1.0 / ARL:
            return float(d)
    return 0.6


def conditions():
    from train_fmnist import load_model
    ffilters = cm_rows.fault_filters(load_model())
    conds = [(f"{s}:{v}", f"shift_{s}_{i}", 1000) for s, vs in cm_rows.SEVERITIES.items() for i, v in enumerate(vs)]
    conds += [(f"{k}:{lay}[{c}]", f"fault_{k}_{f}", 500) for lay, c, f in ffilters for k in cm_rows.FAULT_KINDS]
    return conds


MONITORS = [f"sal-count {t}" for t in SAL_TRANSFORMS] + ["CUSUM 1-conf", "CUSUM entropy", "KS 1-conf",
                                                         "KS entropy", "CUSUM mean log s"]


def null_check(seed=0):
    """Is the cross-fitted null rate right? Rate of rows with >= 1 extreme filter: cross-fitted on the
    calibration rows vs in-sample vs observed on the 6,000 held-out clean rows (model fitted on all 4,000)."""
    _, schema, _ = feed("reference")
    L = layer_of_filter(schema)
    h = cm_rows.load("healthy_clean")
    cal_pool, ev = cm_rows.split()
    rng = np.random.default_rng(1000 + seed)
    perm = rng.permutation(cal_pool)
    cal, rest = perm[:N_CAL], np.concatenate([perm[N_CAL:], ev])
    ref = h["sal"][cal]
    half = N_CAL // 2
    print(f"seed {seed}: share of rows with >= r extreme filters (q = {Q}); held-out = {len(rest)} clean rows")
    for kind in SAL_TRANSFORMS:
        two = kind != "raw"
        cf = np.concatenate([extreme_counts(ref[:half], ref[half:], L, kind, two),
                             extreme_counts(ref[half:], ref[:half], L, kind, two)])
        ins = extreme_counts(ref, ref, L, kind, two)
        out = extreme_counts(ref, h["sal"][rest], L, kind, two)
        for r in [1, 2, 3, 5]:
            n_out = int(np.sum(out >= r))
            lo, hi = stats.beta.ppf([0.025, 0.975], [max(n_out, 1e-9), n_out + 1], [len(out) - n_out + 1, max(len(out) - n_out, 1e-9)])
            print(f"  {kind:13s} r={r}: cross-fitted {np.mean(cf >= r):.4f}  in-sample {np.mean(ins >= r):.4f}  "
                  f"held-out {np.mean(out >= r):.4f} [{lo:.4f}, {hi:.4f}]")
    return 0


def main():
    if "--report" in sys.argv:
        return report()
    if "--null-check" in sys.argv:
        return null_check()
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0
    out = run_seed(seed)
    p = os.path.join(cm_rows.CACHE, f"detect{TAG}_seed{seed}.json")
    with open(p, "w") as f:
        json.dump(out, f, default=float)
    print(f"cached {p}")
    return 0


def run_seed(seed):
    t0 = time.time()
    _, schema, _ = feed("reference")
    L = layer_of_filter(schema)
    h = cm_rows.load("healthy_clean")
    cal_pool, ev = cm_rows.split()
    conds = conditions()
    data = {name: cm_rows.load(name) for _, name, _ in conds}
    monitors = MONITORS
    delays = {}
    false_alarms = {m: 0 for m in monitors}
    prefix_alarms = {}
    calib_info = []
    if True:
        rng = np.random.default_rng(1000 + seed)
        perm = rng.permutation(cal_pool)
        cal, clean_s, clean_x = perm[:N_CAL], perm[N_CAL:N_CAL + N_CLEAN], perm[N_CAL + N_CLEAN:]
        ref = h["sal"][cal]
        fa_rows = np.concatenate([clean_s, clean_x, ev])   # clean rows never used for calibration

        def stat_fns(d_sal, d_conf, d_ent):
            return {"1-conf": 1 - d_conf, "entropy": d_ent,
                    "mean log s": np.log(d_sal.astype(np.float64) + 1e-12).mean(1)}
        ref_stats = stat_fns(ref, h["conf"][cal], h["entropy"][cal])
        # --- per-monitor incremental statistic builders and thresholds
        mon = {}
        for kind in SAL_TRANSFORMS:
            two = kind != "raw"
            half = N_CAL // 2
            cf = np.concatenate([extreme_counts(ref[:half], ref[half:], L, kind, two),
                                 extreme_counts(ref[half:], ref[:half], L, kind, two)])
            r, pi0, pi1 = daemon_rule(cf)
            xf = cf >= r
            hh = cusum_threshold(lambda g, M: bern_incr(g.choice(xf, M), pi0, pi1), rng)
            insample = extreme_counts(ref, ref, L, kind, two)
            mon[f"sal-count {kind}"] = ("sal", kind, two, r, pi0, pi1, hh)
            calib_info.append({"seed": seed, "monitor": f"sal-count {kind}", "r": r, "pi0": pi0, "pi1": pi1, "h": hh,
                               "crossfit_rate": float(np.mean(xf)), "insample_rate": float(np.mean(insample >= r)),
                               "crossfit_mean_count": float(cf.mean()), "insample_mean_count": float(insample.mean())})
        for sname in ["1-conf", "entropy", "mean log s"]:
            v = ref_stats[sname]
            kref = v.mean() + 0.5 * v.std()
            hh = cusum_threshold(lambda g, M, v=v, kref=kref: g.choice(v, M) - kref, rng)
            mon[f"CUSUM {sname}"] = ("cusum", sname, kref, hh)
            calib_info.append({"seed": seed, "monitor": f"CUSUM {sname}", "k": float(kref), "h": hh})
        for sname in ["1-conf", "entropy"]:
            d = ks_threshold(ref_stats[sname], rng)
            mon[f"KS {sname}"] = ("ks", sname, np.sort(ref_stats[sname]), d)
            calib_info.append({"seed": seed, "monitor": f"KS {sname}", "d": d})
        print(f"seed {seed}: thresholds set ({time.time() - t0:.0f} s): " + "; ".join(
            f"{c['monitor']} h={c.get('h', c.get('d')):.3g}" + (f" r={c['r']} xfit {c['crossfit_rate']:.3f} "
                                                                f"in-sample {c['insample_rate']:.3f}" if "r" in c else "")
            for c in calib_info if c["seed"] == seed), flush=True)
        # full-calibration fits for the monitored stream (counts on any rows)
        cache_fit = {kind: (Transform(kind, ref, L),) for kind in SAL_TRANSFORMS}
        fits = {}
        for kind in SAL_TRANSFORMS:
            tr = cache_fit[kind][0]
            xr = tr.apply(ref)
            fits[kind] = (tr, POT(xr), POT(-xr) if kind != "raw" else None)

        def counts(kind, sal):
            tr, up, lo = fits[kind]
            x = tr.apply(sal)
            s, a = up.scores(x)
            e = a & (s > -np.log10(Q))
            if lo is not None:
                s2, a2 = lo.scores(-x)
                e |= a2 & (s2 > -np.log10(Q))
            return e.sum(1)

        def run_monitor(m, sal, conf, ent, onset):
            spec = mon[m]
            if spec[0] == "sal":
                _, kind, _, r, pi0, pi1, hh = spec
                return cusum_run(bern_incr(counts(kind, sal) >= r, pi0, pi1), hh, onset)
            st = stat_fns(sal, conf, ent)
            if spec[0] == "cusum":
                _, sname, kref, hh = spec
                return cusum_run(st[sname] - kref, hh, onset)
            _, sname, rs, d = spec
            ends, D = ks_stats(st[sname], rs)
            al = ks_alarms(ends, D, d)
            fa = sum(1 for a in al if a < onset)
            after = [a for a in al if a >= onset]
            # the monitor restarts after a false alarm: recompute alarms after the last pre-onset one
            return fa, (after[0] - onset + 1) if after else None

        # false alarms on clean rows (one long clean stream per seed)
        fs = fa_rows[rng.permutation(len(fa_rows))]
        for m in monitors:
            fa, _ = run_monitor(m, h["sal"][fs], h["conf"][fs], h["entropy"][fs], onset=len(fs))
            false_alarms[m] += fa
        # detection streams
        for cname, dname, n_on in conds:
            d = data[dname]
            pick = rng.permutation(len(d["sal"]))[:n_on]
            sal = np.concatenate([h["sal"][clean_s], d["sal"][pick]])
            conf = np.concatenate([h["conf"][clean_s], d["conf"][pick]])
            ent = np.concatenate([h["entropy"][clean_s], d["entropy"][pick]])
            for m in monitors:
                fa, dl = run_monitor(m, sal, conf, ent, onset=N_CLEAN)
                prefix_alarms[m] = fa          # the same clean prefix for every condition of this seed
                delays[f"{cname}|{m}"] = dl
        print(f"seed {seed} done ({time.time() - t0:.0f} s)", flush=True)
    return {"seed": seed, "clean_rows": int(len(fa_rows)), "false_alarms": false_alarms,
            "prefix_alarms": prefix_alarms, "calibration": calib_info, "delays": delays}


def report():
    import glob
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(cm_rows.CACHE, f"detect{TAG}_seed*.json")))]
    assert runs, "no cached seeds: run experiments/model_level.py --seed 0 (1, 2) first"
    seeds = len(runs)
    conds = conditions()
    monitors = MONITORS
    false_alarms = {m: sum(r["false_alarms"][m] + r["prefix_alarms"][m] for r in runs) for m in monitors}
    clean_rows_total = sum(r["clean_rows"] + N_CLEAN for r in runs)
    calib_info = [c for r in runs for c in r["calibration"]]
    delays = {(c, m): [r["delays"][f"{c}|{m}"] for r in runs] for c, _, _ in conds for m in monitors}
    for r in runs:
        print("seed %d: " % r["seed"] + "; ".join(
            f"{c['monitor']} " + (f"h={c['h']:.3g}" if "h" in c else f"d={c['d']:.3g}")
            + (f" r={c['r']} pi0={c['pi0']:.4f} cross-fitted rate {c['crossfit_rate']:.4f} in-sample {c['insample_rate']:.4f}"
               if "r" in c else "") for c in r["calibration"]))

    print(f"\n== false alarms per 10,000 clean rows ({clean_rows_total} distinct clean rows over {seeds} seeds) ==")
    for m in monitors:
        print(f"  {m:22s} {false_alarms[m]:4d} -> {1e4 * false_alarms[m] / clean_rows_total:.2f}")
    print(f"\n== rows from onset to alarm: median over {seeds} seeds (detected/seeds); '-' = missed in all ==")
    print(f"{'condition':22s}" + "".join(f"{m:>19s}" for m in monitors))
    summary = {}
    for cname, _, n_on in conds:
        cells = []
        for m in monitors:
            dl = delays[(cname, m)]
            det = [x for x in dl if x is not None]
            med = float(np.median([x if x is not None else np.inf for x in dl]))
            summary[f"{cname}|{m}"] = {"delays": dl, "detected": len(det), "seeds": len(dl),
                                       "median": med if np.isfinite(med) else None}
            cells.append("-" if not det else f"{med:.0f} ({len(det)}/{len(dl)})" if np.isfinite(med) else f">{n_on} ({len(det)}/{len(dl)})")
        print(f"{cname:22s}" + "".join(f"{c:>19s}" for c in cells))
    out = {"seeds": seeds, "arl": ARL, "q": Q, "clean_rows": clean_rows_total,
           "false_alarms": false_alarms, "calibration": calib_info, "detection": summary,
           "conditions": [{"name": c, "onset_rows": n} for c, _, n in conds]}
    with open(os.path.join(FIG_DIR, f"cm_detect{TAG}.json"), "w") as f:
        json.dump(out, f, indent=1, default=float)
    # figure: median delay (capped) per condition and monitor
    fig, ax = plt.subplots(figsize=(15, 5))
    xs = np.arange(len(conds))
    for mi, m in enumerate(monitors):
        y = []
        for cname, _, n_on in conds:
            med = summary[f"{cname}|{m}"]["median"]
            y.append(min(med, 1.2 * n_on) if med is not None else 1.2 * n_on)
        ax.scatter(xs + (mi - len(monitors) / 2) * 0.1, y, s=10, label=m)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([c for c, _, _ in conds], rotation=90, fontsize=6)
    ax.set_ylabel("rows from onset to alarm (median; top = missed)")
    ax.legend(fontsize=7, ncol=4)
    ax.set_title(f"Model-level detection at matched in-control ARL {ARL} ({seeds} seeds)")
    save_fig(fig, f"cm_detect{TAG}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
