"""kill -9 at random moments during a sustained feed, 20 times (docs/operations.md).

Every restart must resume from the last snapshot (never recalibrate once a snapshot of a calibrated
model exists), no snapshot may ever be refused as corrupt, and the alert log's sequence numbers must
have no holes. One conftest `Daemon` (same endpoints, state directory and log) is started 20 times.
"""
import json
import random
import signal
import subprocess
import threading
import time

import numpy as np

from saliency_tap import Publisher, QueryClient

from conftest import ctl_bin

SCHEMA = {"model": "crash", "layers": [{"name": "a", "filters": 24}, {"name": "b", "filters": 40}]}
K = 64


def status(q, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return q.status()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def feeder(ep, stop, rng):
    pub = Publisher(ep["feed"], "crash", SCHEMA, producer_id=42)
    pub.wait_for_subscriber(5.0)
    scale = 0.5 + rng.random(K)
    i = 0
    while not stop.is_set():
        row = (scale * np.exp(0.5 * rng.standard_normal(K))).astype(np.float32)
        if (i // 200) % 3 == 2:          # recurring shift bursts on a few filters: alerts
            row[[3, 30, 50]] *= 60
        pub.publish(row, predicted=0, target=0, target_kind=1)
        i += 1
        if i % 50 == 0:
            time.sleep(0.005)
    pub.close()


def test_kill_minus_nine_twenty_times(saliencyd, tmp_path):
    d = saliencyd(start=False, state_dir=tmp_path / "state", calibration=300, snapshot_interval=1)
    ep = d.endpoints
    rng = np.random.default_rng(7)
    pick = random.Random(7)
    q = QueryClient(ep["query"], timeout=1.0)
    rows_at_kill = 0
    calibrated_snapshot = False
    for cycle in range(20):
        d.start(wait=False)
        s = status(q)
        ms = [m for m in s["models"] if m["model"] == "crash"]
        if calibrated_snapshot:
            assert ms and ms[0]["phase"] == "monitoring", f"cycle {cycle}: restarted without its snapshot"
            # At most what was absorbed before the kill; never more.
            assert ms[0]["rows"] <= rows_at_kill
        stop = threading.Event()
        t = threading.Thread(target=feeder, args=(ep, stop, rng))
        t.start()
        time.sleep(pick.uniform(1.2, 2.5))
        try:
            m = [m for m in q.status()["models"] if m["model"] == "crash"]
            rows_at_kill = m[0]["rows"] if m else 0
        except Exception:
            pass
        d.stop(timeout=10, sig=signal.SIGKILL)          # kill -9, then reap it
        stop.set()
        t.join()
        rows_at_kill += 10_000          # rows possibly absorbed between the status query and the kill
        snap = tmp_path / "state" / "snapshot.bin"
        if snap.exists():
            out = subprocess.run([str(ctl_bin()), "state", "inspect", str(snap), "--json"],
                                 capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            info = json.loads(out.stdout)
            calibrated_snapshot = calibrated_snapshot or any(m["phase"] == "monitoring" for m in info["models"])
    log = d.log_text()
    assert "snapshot refused" not in log
    assert calibrated_snapshot
    rejected = [p for p in (tmp_path / "state").iterdir() if ".rejected-" in p.name]
    assert not rejected
    seqs = [json.loads(line)["seq"] for line in (tmp_path / "state" / "alerts.jsonl").read_text().splitlines()]
    assert seqs, "no alert was raised during the run"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "hole in the alert log"
    q.close()
