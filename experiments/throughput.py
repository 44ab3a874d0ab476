#!/usr/bin/env python3
"""Tap throughput: per-sample saliency rows per second on CPU for the Fashion-MNIST CNN (K=400), batch
sizes 1/32/128, torch.func vmap vs the per-sample backward() loop, 1 and 2 threads.
Measures SaliencyComputer.compute only (forward for the prediction + per-sample gradients + reduction).

    python3 experiments/throughput.py [--seconds 3]
"""
import argparse
import os
import platform
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "clients", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "data"))   # train_fmnist
from train_fmnist import FmnistCNN, WEIGHTS, load_model  # noqa: E402
from saliency_tap import SaliencyComputer  # noqa: E402


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench(comp, bs, seconds):
    x = torch.randn(bs, 1, 28, 28)
    y = torch.randint(0, 10, (bs,))
    comp.compute(x, y)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        comp.compute(x, y)
        n += bs
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    model = load_model() if os.path.exists(WEIGHTS) else FmnistCNN().eval()
    print(f"machine: {cpu_model()}, nproc {os.cpu_count()}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"{'threads':>7s} {'method':>6s} {'batch':>5s} {'rows/s':>9s}")
    for threads in [1, 2]:
        torch.set_num_threads(threads)
        for method in ["vmap", "loop"]:
            comp = SaliencyComputer(model, method=method, chunk_size=128)
            for bs in [1, 32, 128]:
                r = bench(comp, bs, a.seconds)
                print(f"{threads:7d} {method:>6s} {bs:5d} {r:9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
