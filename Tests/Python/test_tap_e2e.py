"""End to end: a ResNet-shaped model served in a loop with the tap sampling in the background, a real
saliencyd, calibration, then a shifted input distribution raises alerts. The publisher's counters
and the daemon's per-producer gap counter tell sampling and queue drops (producer side, no sequence
number consumed) apart from loss on the way (a sequence jump the daemon counts as a gap).

The daemon binary comes from $SALIENCYD_BIN (scripts/test.sh sets it) or .build/debug/saliencyd.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saliency_tap import AlertSubscriber, QueryClient, Tap

ROOT = Path(__file__).resolve().parents[2]
DAEMON = Path(os.environ.get("SALIENCYD_BIN", ROOT / ".build/debug/saliencyd"))
MODEL = "e2e-resnet"
CALIBRATION = 300

torch.set_num_threads(1)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + idt)


class SmallResNet(nn.Module):
    """ResNet-18's layout at 1/8 width on 16x16 inputs: stem, four stages of two BasicBlocks."""

    def __init__(self, classes=10, w=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        chans = [w, w, 2 * w, 4 * w, 8 * w]
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nn.Sequential(Block(chans[i], chans[i + 1], 1 if i == 0 else 2), Block(chans[i + 1], chans[i + 1], 1))
            for i in range(4))
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def daemon(tmp_path):
    if not DAEMON.exists():
        pytest.fail(f"saliencyd binary not found at {DAEMON}; run `swift build` first (scripts/test.sh does)")
    ep = {k: f"ipc://{tmp_path}/{k}" for k in ("feed", "alerts", "query")}
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([str(DAEMON), "--feed", ep["feed"], "--alerts", ep["alerts"], "--query", ep["query"],
                             "--state-dir", str(tmp_path / "state"), "--metrics", "",
                             "--calibration", str(CALIBRATION)], stdout=log, stderr=subprocess.STDOUT)
    q = QueryClient(ep["query"], timeout=2.0)
    deadline = time.monotonic() + 30
    while True:
        try:
            q.status()
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("saliencyd did not start:\n" + (tmp_path / "daemon.log").read_text())
            time.sleep(0.1)
    yield proc, ep, q
    q.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()


def producer_status(q, producer_id):
    for p in q.status().get("producers", []):
        if int(p["producer"], 16) == producer_id:
            return p
    return None


def wait_received(q, producer_id, n, timeout=60.0):
    deadline = time.monotonic() + timeout
    p = None
    while time.monotonic() < deadline:
        p = producer_status(q, producer_id)
        if p is not None and p["received"] + p["gaps"] >= n:
            return p
        time.sleep(0.05)
    raise AssertionError(f"daemon did not account for {n} predictions (last status {p})")


def test_served_model_sampling_calibration_shift_alerts_and_counters(daemon):
    proc, ep, q = daemon
    torch.manual_seed(0)
    model = SmallResNet()
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(64, 3, 16, 16))
    model.eval()
    gen = torch.Generator().manual_seed(1)

    def clean_batch():
        x = torch.randn(16, 3, 16, 16, generator=gen)
        with torch.no_grad():
            y = model(x).argmax(1)             # labelled feedback: the model is right on clean data
        return x, y

    tap = Tap.connect(model, MODEL, ep["feed"], sample_rate=0.5, seed=2, queue_rows=128, max_batch=64)
    assert tap.publisher.wait_for_subscriber(10.0)
    alerts = AlertSubscriber(ep["alerts"], prefix=f"alert.firing.{MODEL}.")
    pid = tap.publisher.producer_id
    offered = 0

    # 1. Serve clean traffic until the daemon has calibrated and seen 300 clean predictions after that.
    while tap.metrics()["published"] < CALIBRATION + 300:
        for _ in range(8):
            x, y = clean_batch()
            out = tap(x, y)                     # model(x) + sampling; the gradient work is on the worker
            assert out.shape == (16, 10)
            offered += 16
        tap.flush(30)
    m = tap.metrics()
    assert m["published"] + m["sampled_out"] + m["dropped_queue_full"] == offered and m["error"] == 0
    assert m["sampled_out"] > 0
    p = wait_received(q, pid, m["published"])
    assert p["received"] == m["published"] and p["gaps"] == 0, p     # sampling is not loss
    model_status = next(s for s in q.status()["models"] if s["model"] == MODEL)
    assert model_status["phase"] == "monitoring", model_status

    # 2. A burst the worker cannot keep up with: rows that do not fit the queue are dropped by the
    #    producer, counted, and take no sequence number, so the daemon still sees no gap.
    with tap._pub_lock:                         # the worker computes but cannot publish meanwhile
        for _ in range(30):
            x, y = clean_batch()
            tap.submit(x, y)
            offered += 16
    tap.flush(30)
    m = tap.metrics()
    assert m["dropped_queue_full"] > 0
    assert m["published"] + m["sampled_out"] + m["dropped_queue_full"] == offered
    p = wait_received(q, pid, m["published"])
    assert p["received"] == m["published"] and p["gaps"] == 0, p

    # 3. Shifted inputs (inverted, 3x contrast, the clean labels): many filters turn extreme. (The same
    #    40 batches of clean traffic raise a couple of transient alerts at most, within the budget.)
    fired = set()
    firing = []
    for _ in range(40):
        x, y = clean_batch()
        tap(-3.0 * x, y)
        offered += 16
        tap.flush(30)
        for a in iter(lambda: alerts.recv(timeout=0.05), None):
            firing.append(a)
            fired.add(int(a["labels"]["filter"]) if a["labels"].get("filter") is not None else -1)
        if len(fired) >= 20:
            break
    assert len(fired) >= 20, f"only {len(fired)} filters alerted on the shifted inputs"
    assert all(a["labels"]["model"] == MODEL and a["status"] == "firing" for a in firing)
    assert q.status()["firing"] > 0
    top = q.top(MODEL, k=5)["top"]
    assert len(top) == 5

    # 4. Loss on the way looks different: five predictions the daemon never receives (a jump of the
    #    sequence, as when a socket drops them) are gaps; the producer's counters do not move.
    m = tap.metrics()
    before = wait_received(q, pid, m["published"])
    assert before["gaps"] == 0
    with tap._pub_lock:
        tap.publisher.sequence += 5
    tap.submit(*clean_batch())
    tap.flush(30)
    m2 = tap.metrics()
    after = wait_received(q, pid, m2["published"] + 5)
    assert after["gaps"] == 5 and after["received"] == m2["published"], after
    assert m2["dropped_queue_full"] == m["dropped_queue_full"] and m2["error"] == 0
    tap.close()
    alerts.close()
