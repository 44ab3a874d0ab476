#!/usr/bin/env python3
"""Markdown tables for docs/results.md "Common-mode-free scorers" from the JSON summaries that
experiments/common_mode.py and experiments/model_level.py write to docs/results/cm_*.json.

    python3 experiments/cm_tables.py
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RES = os.path.join(os.path.dirname(HERE), "docs", "results")
TRANSFORMS = ["raw", "row/mean", "layer ratio", "layer logres", "factor", "factor-PC", "layer rank"]
TAILS = ["z", "z-lower", "z-two", "POT", "POT-lower", "POT-two"]


def load(name):
    p = os.path.join(RES, name)
    return json.load(open(p)) if os.path.exists(p) else None


def ci(v, key):
    lo, hi = v[key + "_ci"]
    return f"{v[key]:.3f} [{lo:.2f}, {hi:.2f}]"


def backdoor(name="cm_backdoor.json"):
    d = load(name)
    if not d:
        return
    r = d["results"]
    print(f"\n### {name}: MRR-first [95%] on {d['rows']} triggered, misclassified rows; "
          f"carrying sets: single {d['carrying']['single']}, greedy {d['carrying']['greedy']}\n")
    print("| transform | " + " | ".join(f"{t} (8 / 2)" for t in TAILS) + " |")
    print("|---|" + "---|" * len(TAILS))
    for tr in TRANSFORMS:
        cells = []
        for t in TAILS:
            a, b = r[f"single|{t} | {tr}"], r[f"greedy|{t} | {tr}"]
            cells.append(f"{a['MRR-first']:.2f} / {b['MRR-first']:.2f}")
        print(f"| {tr} | " + " | ".join(cells) + " |")
    print("\nwith intervals, best per tail:")
    for t in TAILS:
        best = max(TRANSFORMS, key=lambda tr: r[f"single|{t} | {tr}"]["MRR-first"])
        print(f"  {t:9s} best {best:13s} single {ci(r[f'single|{t} | {best}'], 'MRR-first')}  "
              f"greedy {ci(r[f'greedy|{t} | {best}'], 'MRR-first')}  R@10 single {r[f'single|{t} | {best}']['R@10']:.3f}")


def faults():
    d = load("cm_faults.json")
    if not d:
        return
    r = d["results"]
    for kind in ["zeroed", "scaled", "backdoor"]:
        print(f"\n### faults, {kind}: per-row MRR [95%] (mean over 12 single-filter faults) / recall@10\n")
        print("| transform | " + " | ".join(TAILS) + " |")
        print("|---|" + "---|" * len(TAILS))
        for tr in TRANSFORMS:
            cells = [f"{r[f'{kind}|{t} | {tr}']['MRR']:.3f} [{r[f'{kind}|{t} | {tr}']['MRR_ci'][0]:.2f}, "
                     f"{r[f'{kind}|{t} | {tr}']['MRR_ci'][1]:.2f}] / {r[f'{kind}|{t} | {tr}']['R@10']:.2f}" for t in TAILS]
            print(f"| {tr} | " + " | ".join(cells) + " |")
    print("\n### per-filter MRR, selected scorers\n")
    fl = d["filters"]
    eff = d["effects"]
    print("| kind | scorer | " + " | ".join(f"{f['layer']}[{f['channel']}]" for f in fl) + " |")
    print("|---|---|" + "---|" * len(fl))
    for kind in ["zeroed", "scaled", "backdoor"]:
        e = [eff[kind + "|" + str(f["filter"])] for f in fl]
        print(f"| {kind} | effect: clean acc / trigger | " + " | ".join(f"{a[0]:.2f} / {a[1]:.2f}" for a in e) + " |")
        for sc in ["POT | raw", "POT-two | raw", "POT | layer logres", "POT-two | layer logres", "z-two | layer logres"]:
            v = r[f"{kind}|{sc}"]["MRR_per_filter"]
            print(f"| {kind} | {sc.replace(' | ', ' on ')} | " + " | ".join("%.2f" % v[str(f["filter"])] for f in fl) + " |")


def depth():
    d = load("cm_depth.json")
    if not d:
        return
    r, s = d["results"], d["summary"]
    conds = []
    for k in r:
        c = "|".join(k.split("|")[:2])
        if c not in conds:
            conds.append(c)
    print("\n### depth: deep3 share of per-row top-20 (filter share 0.72); last columns: mean over the 12 shifted "
          "conditions, TV distance, conditions where deeper than POT | raw (paired 95% CI > 0)\n")
    print("| scorer | " + " | ".join(c.replace("|", " ") for c in conds) + " | mean shifted | TV | deeper than POT |")
    print("|---|" + "---|" * (len(conds) + 3))
    print("| filter share | " + " | ".join("0.72" for _ in conds) + " | 0.720 | 0 | |")
    for tr in TRANSFORMS:
        for t in ["z", "POT", "z-two", "POT-two", "POT-lower"]:
            n = f"{t} | {tr}"
            print(f"| {n.replace(' | ', ' on ')} | " + " | ".join(f"{r[f'{c}|{n}']['deep3']:.2f}" for c in conds)
                  + f" | {s[n]['deep3_mean_shifted']:.3f} | {s[n]['tv_mean_shifted']:.3f} | {s[n]['conditions_deeper_than_pot']}/12 |")
    print("\nper-layer shares, selected:")
    for n in ["POT | raw", "z | raw", "POT | layer logres", "z | layer logres", "POT | layer ratio", "z | layer rank"]:
        for c in conds:
            if c.startswith("noise") or c.startswith("clean") or c.startswith("inverted|0.3") or c.startswith("rotated|45"):
                print(f"  {n:22s} {c:16s} " + " ".join(f"{x:.3f}" for x in r[f"{c}|{n}"]["shares"]))


def detect():
    d = load("cm_detect.json")
    if not d:
        return
    mons = list(d["false_alarms"].keys())
    print(f"\n### detection ({d['seeds']} seeds, ARL {d['arl']}): median rows from onset to alarm (detected/seeds)\n")
    print("| condition | " + " | ".join(mons) + " |")
    print("|---|" + "---|" * len(mons))
    for c in d["conditions"]:
        cells = []
        for m in mons:
            v = d["detection"][f"{c['name']}|{m}"]
            med = v["median"]
            cells.append("missed" if v["detected"] == 0 else
                         (f"{med:.0f} ({v['detected']}/{v['seeds']})" if med is not None else
                          f">{c['onset_rows']} ({v['detected']}/{v['seeds']})"))
        print(f"| {c['name']} | " + " | ".join(cells) + " |")
    print("| false alarms per 10,000 clean rows | " + " | ".join(
        f"{1e4 * d['false_alarms'][m] / d['clean_rows']:.2f} ({d['false_alarms'][m]})" for m in mons) + " |")


def main():
    backdoor()
    backdoor("cm_backdoor_predtarget.json")
    faults()
    depth()
    detect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
