#!/usr/bin/env python3
"""Cost of full per-sample filter saliency relative to a plain forward of the same batch.

For each architecture (ResNet-18/50 shapes, random weights, 224x224), thread count and batch size,
in one process and one run:
  forward  model(x) under torch.inference_mode (what serving does)
  new      SaliencyComputer(model).compute(x)            (hooks, the default since 0.2)
  old      saliency-tap 0.1's SaliencyComputer, loaded from git (commit 2af564b): a no-grad forward
           and then torch.func vmap(grad) over every conv weight
Each path gets one warm-up call; then the timed calls are interleaved (forward, new, old, forward,
new, old, ...) so that all paths see the same machine load (the machine is shared). Figures are
medians of --reps calls (--old-reps for the old path); ratios divide medians of the same cell.

  python3 Benchmarks/tap/bench_saliency.py --out Benchmarks/results/2026-12-02-tap/saliency.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

import torch  # noqa: E402

from resnet import resnet18, resnet50  # noqa: E402
from saliency_tap import SaliencyComputer, conv_weights  # noqa: E402

OLD_COMMIT = "2af564b"


def old_computer_class():
    """saliency-tap 0.1's SaliencyComputer, from git, with its conv_weights (nn.Conv2d only)."""
    src = subprocess.check_output(["git", "-C", ROOT, "show", f"{OLD_COMMIT}:clients/python/saliency_tap/saliency.py"],
                                  text=True)
    src = src.replace("from .schema import conv_weights", "")
    mod = types.ModuleType("saliency_tap_0_1")
    sys.modules[mod.__name__] = mod
    mod.conv_weights = lambda m: [(n, w) for n, w in conv_weights(m, ("conv2d",))]
    exec(compile(src, f"{OLD_COMMIT}:saliency.py", "exec"), mod.__dict__)
    return mod.SaliencyComputer


def interleaved(fns, reps):
    """fns: {name: (callable, reps)}. One warm-up call each, then rounds of one timed call per path."""
    for fn, _ in fns.values():
        fn()
    times = {k: [] for k in fns}
    for r in range(max(n for _, n in fns.values())):
        for k, (fn, n) in fns.items():
            if r < n:
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), v) for k, v in times.items()}


def machine():
    try:
        model = next(l.split(":", 1)[1].strip() for l in subprocess.check_output(["lscpu"], text=True).splitlines()
                     if l.startswith("Model name"))
    except Exception:
        model = platform.processor()
    return {"cpu": model, "nproc": os.cpu_count(), "uptime_start": subprocess.check_output(["uptime"], text=True).strip(),
            "torch": torch.__version__, "python": platform.python_version()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--old-reps", type=int, default=2)
    ap.add_argument("--no-old", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    Old = None if a.no_old else old_computer_class()
    info = machine()
    info["command"] = " ".join([sys.executable] + sys.argv)
    print(json.dumps(info), flush=True)
    results = []
    for arch in a.archs.split(","):
        torch.manual_seed(0)
        model = {"resnet18": resnet18, "resnet50": resnet50}[arch]().eval()
        new = SaliencyComputer(model)
        old = Old(model) if Old else None
        for threads in map(int, a.threads.split(",")):
            torch.set_num_threads(threads)
            for B in map(int, a.batches.split(",")):
                x = torch.randn(B, 3, 224, 224)

                def fwd():
                    with torch.inference_mode():
                        model(x)

                row = {"arch": arch, "threads": threads, "batch": B}
                paths = {"forward": (fwd, a.reps), "new": (lambda: new.compute(x), a.reps)}
                if old is not None:
                    paths["old"] = (lambda: old.compute(x), a.old_reps)
                for k, (med, all_) in interleaved(paths, a.reps).items():
                    row[f"{k}_s"], row[f"{k}_all"] = med, all_
                row["new_x"] = row["new_s"] / row["forward_s"]
                if old is not None:
                    row["old_x"] = row["old_s"] / row["forward_s"]
                    row["speedup"] = row["old_s"] / row["new_s"]
                row["uptime"] = subprocess.check_output(["uptime"], text=True).strip()
                results.append(row)
                if a.out:                      # written after every cell: a partial run keeps its figures
                    os.makedirs(os.path.dirname(a.out), exist_ok=True)
                    with open(a.out, "w") as f:
                        json.dump({"machine": info, "results": results}, f, indent=1)
                print(f"{arch:9s} threads={threads} B={B:3d}  forward {row['forward_s']*1e3:8.1f} ms  "
                      f"new {row['new_s']*1e3:8.1f} ms ({row['new_x']:.2f}x)"
                      + (f"  old {row['old_s']*1e3:9.1f} ms ({row['old_x']:.2f}x)  old/new {row['speedup']:.1f}"
                         if old is not None else "") + f"   [{row['uptime'].split('load average:')[-1].strip()}]",
                      flush=True)
    info["uptime_end"] = subprocess.check_output(["uptime"], text=True).strip()
    if a.out:
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
