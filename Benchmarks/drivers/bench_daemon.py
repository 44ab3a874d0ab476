#!/usr/bin/env python3
"""End-to-end daemon throughput vs raw ZeroMQ transport, same message size, same run (BENCHMARKS.md).

1. transport: `saliencyctl sink` (bind SUB, count, no processing) ← `saliencyctl replay`
2. daemon:    `saliencyd` ← `saliencyctl replay` (calibration first, then timed rows)
Both use the same K-float rows and the same replay command; the two alternate `--pairs` times and
each pair's ratio compares back-to-back runs (the median is reported: the machine is noisy).
Reports msgs/s for each, the ratios, drops (sequence gaps), and the daemon's arrival→alert-publish
latency (p50/p99 from `status`) in a separate run at a steady `--latency-rate`.

    python3 Benchmarks/drivers/bench_daemon.py [--filters 26560] [--rows 512] [--repeat 20] [--pairs 3] [--bin .build/release]
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


def query(ep, req, timeout=5.0):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(ep)
    s.send(json.dumps(req).encode())
    if not s.poll(int(timeout * 1000)):
        s.close()
        raise TimeoutError(req)
    r = json.loads(s.recv())
    s.close()
    return r


def write_schema(path, model, filters, per_layer=512):
    """A schema of `filters` filters in layers of at most `per_layer` (layer0, layer1, …)."""
    layers = [{"name": f"layer{i}", "filters": min(per_layer, filters - i * per_layer)}
              for i in range((filters + per_layer - 1) // per_layer)]
    json.dump({"model": model, "layers": layers}, open(path, "w"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=int, default=26560)
    ap.add_argument("--rows", type=int, default=512, help="distinct rows in the pool")
    ap.add_argument("--repeat", type=int, default=20, help="passes over the pool (timed rows = rows × repeat; short runs are dominated by start-up effects)")
    ap.add_argument("--calibration", type=int, default=1000)
    ap.add_argument("--bin", default=".build/release")
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--no-shift", action="store_true", help="no planted shifts (no alerts)")
    ap.add_argument("--pairs", type=int, default=3, help="transport/daemon run pairs (the median ratio is reported)")
    ap.add_argument("--latency-rate", type=float, default=500, help="rows/s of the separate latency run (0 = skip)")
    a = ap.parse_args()
    ctl, daemon = os.path.join(a.bin, "saliencyctl"), os.path.join(a.bin, "saliencyd")
    K = a.filters
    tmp = tempfile.mkdtemp(prefix="bench-daemon-")
    rng = np.random.default_rng(1)
    scale = (0.5 + rng.random(K)).astype(np.float32)
    def rows(n):
        return (scale * np.exp(0.6 * rng.standard_normal((n, K)))).astype(np.float32)
    calib = rows(a.calibration)
    pool = rows(a.rows)
    # Every 64-row block ends with 16 rows in which a fresh set of 3 filters is far in its tail,
    # so alerts keep firing through the run (for the latency figures).
    for b in range(0 if a.no_shift else a.rows // 64):
        planted = rng.choice(K, 3, replace=False)
        pool[b * 64 + 48:(b + 1) * 64, planted] *= 80
    np.save(f"{tmp}/calib.npy", calib)
    np.save(f"{tmp}/pool.npy", pool)
    write_schema(f"{tmp}/schema.json", "bench", K)
    n_timed = a.rows * a.repeat
    feed, q = "tcp://127.0.0.1:5760", "tcp://127.0.0.1:5762"
    replay = [ctl, "replay", f"{tmp}/pool.npy", "--schema", f"{tmp}/schema.json", "--feed", feed, "--repeat", str(a.repeat), "--json"]

    def transport_rate():
        sink = subprocess.Popen([ctl, "sink", "--feed", feed, "--count", str(n_timed), "--json"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        subprocess.run(replay, check=True, stdout=subprocess.DEVNULL)
        out, _ = sink.communicate(timeout=600)
        return json.loads(out)

    # 2. the daemon (unthrottled: throughput), then a fresh daemon at a steady rate (latency)
    def run_daemon(rate, tag):
        state = f"{tmp}/state-{tag}"
        d = subprocess.Popen([daemon, "--feed", feed, "--alerts", "tcp://127.0.0.1:5761", "--query", q, "--state-dir", state,
                              "--metrics", "", "--calibration", str(a.calibration), "--log-level", "warning"],
                             stderr=open(f"{tmp}/daemon-{tag}.log", "w"))
        for _ in range(100):
            try:
                query(q, {"op": "status"}, 0.2); break
            except Exception:
                time.sleep(0.1)
        subprocess.run([ctl, "replay", f"{tmp}/calib.npy", "--schema", f"{tmp}/schema.json", "--feed", feed], check=True, stdout=subprocess.DEVNULL)
        while True:
            m = query(q, {"op": "status"})["models"]
            if m and m[0]["phase"] == "monitoring":
                break
            time.sleep(0.1)
        base = m[0]["rows"]
        t0 = time.monotonic()
        rp = subprocess.Popen(replay + (["--rate", str(rate)] if rate else []), stdout=subprocess.DEVNULL)
        while True:
            s = query(q, {"op": "status"})
            if s["models"][0]["rows"] >= base + n_timed:
                t1 = time.monotonic(); break
            if time.monotonic() - t0 > 900:
                print("timeout", s, file=sys.stderr); t1 = time.monotonic(); break
            time.sleep(0.01)
        rp.wait()
        s = query(q, {"op": "status"})
        d.terminate()
        return s, t0, t1, d.wait(timeout=60)

    # Transport and daemon alternate, `pairs` times: each ratio compares two runs made back to back
    # (this machine is shared and noisy); the median ratio is the figure reported.
    pairs = []
    for i in range(a.pairs):
        transport = transport_rate()
        s, t0, t1, rc = run_daemon(0, f"throughput{i}")
        rate = n_timed / (t1 - t0)
        pairs.append({"transport_msgs_per_s": round(transport["messages_per_second"], 1), "daemon_rows_per_s": round(rate, 1),
                      "ratio": round(rate / transport["messages_per_second"], 3), "gaps": s["gaps"], "rejected": s["rejected"],
                      "daemon_exit": rc, "alert_latency_us": s.get("alert_latency_us", {})})
    lat = run_daemon(a.latency_rate, "latency")[0] if a.latency_rate > 0 else {}
    ratios = sorted(p["ratio"] for p in pairs)
    median = ratios[len(ratios) // 2] if len(ratios) % 2 else (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
    result = {
        "filters": K, "message_bytes": int(transport["bytes_per_message"]), "timed_rows": n_timed,
        "pairs": pairs,
        "median_ratio": round(median, 3),
        "gaps": sum(p["gaps"] for p in pairs), "rejected": [p["rejected"] for p in pairs],
        "latency_run": {"rate": a.latency_rate, "alerts": lat.get("alert_seq"), "gaps": lat.get("gaps"),
                        "alert_latency_us": lat.get("alert_latency_us", {})},
        "daemon_exit": max(p["daemon_exit"] for p in pairs),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
