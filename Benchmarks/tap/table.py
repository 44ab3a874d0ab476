#!/usr/bin/env python3
"""Markdown tables from bench_saliency.py / bench_serving.py JSON output.

  python3 Benchmarks/tap/table.py Benchmarks/results/2026-12-02-tap/saliency.json [serving.json ...]
"""
import json
import sys


def saliency(d):
    rows = d["results"]
    print("| model | threads | batch | forward | new (hooks) | new / forward | old (0.1, vmap) | old / forward | old / new | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        load = r["uptime"].split("load average:")[-1].split(",")[0].strip()
        old = (f"{r['old_s']*1e3:,.0f} ms | {r['old_x']:.2f}× | {r['speedup']:.1f}×" if "old_s" in r else "– | – | –")
        print(f"| {r['arch']} | {r['threads']} | {r['batch']} | {r['forward_s']*1e3:,.1f} ms | {r['new_s']*1e3:,.0f} ms | "
              f"**{r['new_x']:.2f}×** | {old} | {load} |")


def serving(d):
    rows = d["results"]
    print("| model | threads | batch | sample_rate | requests | mean | p50 | p99 | added (mean) | submit() mean / p99 | rows published | worker busy | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        load = r["uptime"].split("load average:")[-1].split(",")[0].strip()
        if r["arm"] == "off":
            extra = "– | – | – |"
        else:
            extra = (f"{r['submit_mean_us']:.0f} / {r['submit_p99_us']:.0f} µs | {r['published']} of {r['rows_offered']} | "
                     f"{r['worker_seconds']:.1f} s of {r['serving_seconds']:.0f} s |")
        added = "" if r["arm"] == "off" else "**%+.1f%%**" % (r["added_mean"] * 100)
        print(f"| {r['arch']} | {r['threads']} | {r['batch']} | {r['arm']} | {r['requests']} | {r['mean_ms']:.1f} ms | "
              f"{r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {added} | {extra} {load} |")


for path in sys.argv[1:]:
    with open(path) as f:
        d = json.load(f)
    m = d["machine"]
    print(f"\n`{m['command']}` — {m['cpu']}, {m['nproc']} CPUs, torch {m['torch']}; "
          f"start: `{m['uptime_start']}`; end: `{m.get('uptime_end', '?')}`\n")
    (serving if d["results"] and "arm" in d["results"][0] else saliency)(d)
