#!/usr/bin/env python3
"""Overload test: publish faster than saliencyd can absorb, for a while, and watch it cope.

Checks, once a second: the daemon answers `status`, its RSS stays flat (after the first 20 s),
drops show up as counted sequence gaps, nothing crashes. Prints a summary; exits 1 on a failure.

    python3 Benchmarks/drivers/load_test.py [--filters 26560] [--seconds 180] [--bin .build/release]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import zmq

sys.path.insert(0, os.path.dirname(__file__))
from bench_daemon import query, write_schema  # noqa: E402


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=int, default=26560)
    ap.add_argument("--seconds", type=int, default=180)
    ap.add_argument("--bin", default=".build/release")
    a = ap.parse_args()
    ctl, daemon = os.path.join(a.bin, "saliencyctl"), os.path.join(a.bin, "saliencyd")
    K = a.filters
    tmp = tempfile.mkdtemp(prefix="load-")
    rng = np.random.default_rng(2)
    scale = (0.5 + rng.random(K)).astype(np.float32)
    np.save(f"{tmp}/rows.npy", (scale * np.exp(0.6 * rng.standard_normal((256, K)))).astype(np.float32))
    write_schema(f"{tmp}/schema.json", "load", K)
    feed, q = "tcp://127.0.0.1:5860", "tcp://127.0.0.1:5862"
    d = subprocess.Popen([daemon, "--feed", feed, "--alerts", "tcp://127.0.0.1:5861", "--query", q, "--state-dir", f"{tmp}/state",
                          "--metrics", "", "--calibration", "256", "--log-level", "warning"], stderr=open(f"{tmp}/daemon.log", "w"))
    time.sleep(1)
    # Unthrottled publishers (two of them) with a bounded send queue: the daemon cannot keep up.
    pubs = [subprocess.Popen([ctl, "replay", f"{tmp}/rows.npy", "--schema", f"{tmp}/schema.json", "--feed", feed,
                              "--repeat", "100000", "--hwm", "1000", "--producer-id", str(p + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for p in range(2)]
    t0 = time.monotonic()
    samples, failures = [], []
    while time.monotonic() - t0 < a.seconds:
        time.sleep(1)
        if d.poll() is not None:
            failures.append(f"daemon exited with {d.returncode}"); break
        try:
            s = query(q, {"op": "status"}, timeout=3)
        except Exception as e:
            failures.append(f"status unanswered at {time.monotonic() - t0:.0f}s: {e}"); continue
        m = s["models"][0] if s["models"] else {"rows": 0}
        samples.append((time.monotonic() - t0, m["rows"], s["gaps"], rss_kib(d.pid)))
    for p in pubs:
        p.kill()
    d.terminate()
    rc = d.wait(timeout=60)
    # Flat = bounded: once the queues have filled and a couple of snapshots have been written (the
    # first half of the run), RSS may not keep growing.
    third = [x for x in samples if x[0] > a.seconds / 2]
    rss0, rss1 = (third[0][3], third[-1][3]) if third else (0, 0)
    timeline = {f"{int(x[0])}s": x[3] for x in samples[:: max(1, len(samples) // 8)]}
    rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0]) if len(samples) > 1 else 0
    summary = {"filters": K, "seconds": a.seconds, "daemon_rows_per_s": round(rate, 1), "gaps_counted": samples[-1][2] if samples else None,
               "rss_kib_at_half": rss0, "rss_kib_at_end": rss1, "rss_kib_timeline": timeline, "status_answered": len(samples), "exit_code": rc, "failures": failures}
    print(json.dumps(summary, indent=1))
    if failures or rc != 0 or (rss0 and rss1 > rss0 * 1.05 + 10_000) or not samples or samples[-1][2] == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
