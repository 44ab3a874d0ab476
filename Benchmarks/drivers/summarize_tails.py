#!/usr/bin/env python3
"""Summarizes bench_tails.sh output (BENCHMARKS.md, "Two tails").

Per round and level: each run's predictions/s (wall clock) and, where the build reports it,
cpu_predictions_per_second (the timed loop's thread CPU time: excludes the time the pinned thread
waited for the CPU while other processes ran), and the time per row relative to base upper in
the same round. Then the medians over rounds.

Usage: summarize_tails.py bench_tails.jsonl
"""
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
by = defaultdict(dict)   # (round, level) -> name -> (wall, cpu, load)
for r in rows:
    res = r["result"]
    name = "base upper" if r["build"] == "base" else "new " + res.get("tails", "upper")
    by[(r["round"], res["level"])][name] = (res["predictions_per_second"], res.get("cpu_predictions_per_second"), r["uptime"].split(",")[0])
names = ["base upper", "new upper", "new lower", "new both"]
ratios = defaultdict(list)
for (rnd, level), runs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    ref = runs.get("base upper")
    cells = []
    for n in names:
        if n not in runs:
            continue
        wall, cpu, load = runs[n]
        rw = ref[0] / wall if ref else None
        rc = ref[1] / cpu if ref and ref[1] and cpu else None
        ratios[(level, n, "wall")].append(rw)
        ratios[(level, n, "cpu")].append(rc)
        cells.append(f"{n}: {wall:,.0f} ({rw:.2f}x) cpu {cpu:,.0f} ({rc:.2f}x) load {load}" if rc else f"{n}: {wall:,.0f} load {load}")
    print(f"round {rnd} level {level}: " + "; ".join(cells))
print()
for level in sorted({k[0] for k in ratios}):
    print(f"level {level} median ratio to base upper (time per row):",
          ", ".join(f"{n} wall {statistics.median([x for x in ratios[(level, n, 'wall')] if x]):.2f}x / cpu {statistics.median([x for x in ratios[(level, n, 'cpu')] if x]):.2f}x"
                    for n in names if ratios[(level, n, 'wall')]))
