#!/usr/bin/env python3
"""Serving latency with the tap sampling in the background, against the same serving loop without it.

A closed serving loop on the main thread (one request after the other, as a model server's worker
does): each request is `model(x)` under torch.inference_mode; in the "tap" arms it is followed by
`tap.submit(x)` (sample_rate r: the sampled rows are copied into the queue and the tap's worker
thread computes and publishes their saliency meanwhile). Arms run in alternating blocks of
--block requests (off, r1, r2, off, r1, r2, ...) so that all arms see the same machine load; after a
tap block the worker is flushed (untimed) so that its work does not leak into the next block.

Reported per arm: request latency mean / p50 / p90 / p99, added latency relative to "off" (ratio of
means), the time of the submit() call alone on the serving thread, rows sampled and published, and
the worker's busy time. The publisher connects to an endpoint nobody binds (a PUB with no subscriber
drops messages), so the figures are the tap's own cost, not the daemon's.

  python3 Benchmarks/tap/bench_serving.py --out Benchmarks/results/2026-12-02-tap/serving.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from resnet import resnet18, resnet50  # noqa: E402
from saliency_tap import Tap  # noqa: E402


def pct(v, q):
    return float(np.percentile(np.asarray(v), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rates", default="0.01,0.1")
    ap.add_argument("--block", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--worker-nice", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cpu = next(l.split(":", 1)[1].strip() for l in subprocess.check_output(["lscpu"], text=True).splitlines()
               if l.startswith("Model name"))
    info = {"cpu": cpu, "nproc": os.cpu_count(), "torch": torch.__version__,
            "command": " ".join([sys.executable] + sys.argv),
            "uptime_start": subprocess.check_output(["uptime"], text=True).strip()}
    print(json.dumps(info), flush=True)
    torch.manual_seed(0)
    model = {"resnet18": resnet18, "resnet50": resnet50}[a.arch]().eval()
    rates = [float(r) for r in a.rates.split(",")]
    tmp = tempfile.mkdtemp()
    results = []
    for threads in map(int, a.threads.split(",")):
        torch.set_num_threads(threads)
        taps = {r: Tap.connect(model, a.arch, f"ipc://{tmp}/feed", sample_rate=r, seed=1, queue_rows=256,
                               worker_nice=a.worker_nice) for r in rates}
        g = torch.Generator().manual_seed(2)
        x = torch.randn(a.batch, 3, 224, 224, generator=g)
        lat = {k: [] for k in ["off"] + rates}
        cpu = {k: [] for k in ["off"] + rates}     # the serving thread's CPU time per request
        sub_t = {r: [] for r in rates}
        with torch.inference_mode():
            for _ in range(5):
                model(x)
        for tap in taps.values():          # warm the worker path (first backward allocates)
            tap.computer.compute(x)
        for _ in range(a.rounds):
            for arm in ["off"] + rates:
                tap = taps.get(arm)
                for _ in range(a.block):
                    t0 = time.perf_counter()
                    c0 = time.thread_time()
                    with torch.inference_mode():
                        model(x)
                    if tap is not None:
                        t1 = time.perf_counter()
                        tap.submit(x)
                        sub_t[arm].append(time.perf_counter() - t1)
                    lat[arm].append(time.perf_counter() - t0)
                    cpu[arm].append(time.thread_time() - c0)
                if tap is not None:
                    tap.flush()
        base = statistics.mean(lat["off"])
        for arm in ["off"] + rates:
            v = lat[arm]
            row = {"arch": a.arch, "threads": threads, "batch": a.batch, "arm": arm, "requests": len(v),
                   "mean_ms": statistics.mean(v) * 1e3, "p50_ms": pct(v, 50) * 1e3, "p90_ms": pct(v, 90) * 1e3,
                   "p99_ms": pct(v, 99) * 1e3, "added_mean": statistics.mean(v) / base - 1.0,
                   "added_p50": pct(v, 50) / pct(lat["off"], 50) - 1.0,
                   "cpu_mean_ms": statistics.mean(cpu[arm]) * 1e3,
                   "added_cpu": statistics.mean(cpu[arm]) / statistics.mean(cpu["off"]) - 1.0}
            if arm != "off":
                m = taps[arm].metrics()
                s = sub_t[arm]
                row.update(submit_mean_us=statistics.mean(s) * 1e6, submit_p99_us=pct(s, 99) * 1e6,
                           submit_max_us=max(s) * 1e6, rows_offered=len(v) * a.batch,
                           published=m["published"], sampled_out=m["sampled_out"],
                           dropped=m["dropped_queue_full"], worker_seconds=m["worker_seconds"],
                           worker_cpu_seconds=m["worker_cpu_seconds"],
                           serving_seconds=sum(v))
            row["uptime"] = subprocess.check_output(["uptime"], text=True).strip()
            results.append(row)
            if a.out:                          # written after every cell: a partial run keeps its figures
                os.makedirs(os.path.dirname(a.out), exist_ok=True)
                with open(a.out, "w") as f:
                    json.dump({"machine": info, "results": results}, f, indent=1)
            extra = ""
            if arm != "off":
                extra = (f"  serving-thread CPU {row['cpu_mean_ms']:.2f} ms/request ({row['added_cpu']*100:+.2f}%)"
                         f"  submit mean {row['submit_mean_us']:.1f} us p99 {row['submit_p99_us']:.1f} us"
                         f"  rows {row['published']}/{row['rows_offered']} dropped {row['dropped']}"
                         f"  worker {row['worker_seconds']:.2f} s wall, {row['worker_cpu_seconds']:.2f} s CPU,"
                         f" serving {row['serving_seconds']:.1f} s")
            print(f"{a.arch} B={a.batch} threads={threads} {str(arm):>5s}: mean {row['mean_ms']:.2f} ms "
                  f"p50 {row['p50_ms']:.2f} p90 {row['p90_ms']:.2f} p99 {row['p99_ms']:.2f}  "
                  f"added {row['added_mean']*100:+.2f}% (p50 {row['added_p50']*100:+.2f}%){extra}"
                  f"   [{row['uptime'].split('load average:')[-1].strip()}]", flush=True)
        for tap in taps.values():
            tap.close()
    info["uptime_end"] = subprocess.check_output(["uptime"], text=True).strip()
    if a.out:
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
