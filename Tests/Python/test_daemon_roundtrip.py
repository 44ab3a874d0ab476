"""Round trip: a PyTorch model, the saliency tap, a real saliencyd process, alerts and queries back.

The daemon is started by conftest's `saliencyd` fixture: its binary comes from $SALIENCYD_BIN
(scripts/test.sh sets it) or .build/debug/saliencyd, saliencyctl from $SALIENCYCTL.
"""
import json
import subprocess
import time

import pytest
import torch
from torch import nn

from saliency_tap import AlertSubscriber, Publisher, QueryClient, SaliencyComputer, schema_from_model

from conftest import ctl_bin


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.down = nn.Conv2d(4, 6, 1, stride=2, bias=False)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h) + self.down(h))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.fixture
def daemon(saliencyd):
    d = saliencyd(calibration=200)          # waits until it answers status (conftest.Daemon)
    ep = d.endpoints
    q = QueryClient(ep["query"], timeout=2.0)
    yield d, ep, q
    if d.alive():
        assert d.stop(timeout=30) == 0, "saliencyd did not exit cleanly on SIGTERM"
    q.close()


def wait_rows(q, model, rows, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ms = [m for m in q.status()["models"] if m["model"] == model]
        if ms and ms[0]["rows"] >= rows:
            return ms[0]
        time.sleep(0.05)
    raise AssertionError(f"daemon did not absorb {rows} rows of {model}")


def test_tap_to_daemon_round_trip(daemon):
    d, ep, q = daemon
    torch.manual_seed(0)
    model = SmallCNN().eval()
    schema = schema_from_model(model, "roundtrip")
    computer = SaliencyComputer(model)
    alerts = AlertSubscriber(ep["alerts"])
    pub = Publisher(ep["feed"], "roundtrip", schema)
    assert pub.wait_for_subscriber(10.0)

    def send(x, y):
        batch = computer.compute(x, y)
        pub.publish_batch(batch)
        return batch

    gen = torch.Generator().manual_seed(1)
    sent = 0
    for _ in range(10):                       # calibration + clean traffic: 20 × 16 = 320 rows
        x = torch.randn(16, 1, 8, 8, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        sent += len(send(x, y).saliency)
    for _ in range(10):
        x = torch.randn(16, 1, 8, 8, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        sent += len(send(x, y).saliency)
    status = wait_rows(q, "roundtrip", sent)
    assert status["phase"] == "monitoring"
    assert status["filters"] == sum(l["filters"] for l in schema["layers"])

    # A shift the model has never seen: huge-contrast inputs with a fixed wrong label.
    for _ in range(6):
        x = 40 * torch.randn(16, 1, 8, 8, generator=gen)
        sent += len(send(x, torch.zeros(16, dtype=torch.long)).saliency)
    wait_rows(q, "roundtrip", sent)

    got = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        a = alerts.recv(timeout=0.5)
        if a is None:
            if got:
                break
            continue
        got.append(a)
    # Filter alerts (the model-level ModelShift, armed from the first monitored row, may fire too).
    firing = [a for a in got if a["status"] == "firing" and a["labels"]["alertname"] == "SalientFilter"]
    assert firing, "no alert for a 40x contrast shift"
    for a in firing:
        assert a["labels"]["model"] == "roundtrip"
        j = int(a["labels"]["filter"])
        assert 0 <= j < status["filters"]
    seqs = [a["seq"] for a in got]
    assert seqs == sorted(seqs)

    top = q.top("roundtrip", k=5)["top"]
    assert len(top) == 5 and all({"filter", "layer", "channel", "score"} <= set(e) for e in top)
    assert {int(a["labels"]["filter"]) for a in firing} & {e["filter"] for e in q.top("roundtrip", k=status["filters"])["top"][:10]}

    st = q.status()
    # saliencyctl's per-layer summary adds up to the firing count.
    ctl = ctl_bin()
    out = subprocess.run([str(ctl), "alerts", "--summary", "--json", "--query", ep["query"]], capture_output=True, text=True, check=True)
    groups = [json.loads(l) for l in out.stdout.splitlines()]
    assert sum(g["firing"] for g in groups) == st["firing"]
    # (the model-level group, layer "_model", counts the ModelShift alert and names no filter)
    assert all(g["model"] == "roundtrip" and len(g["filters"]) == (0 if g["layer"] == "_model" else g["firing"]) for g in groups)
    prod = [p for p in st["producers"] if int(p["producer"], 16) == pub.producer_id]
    assert prod and prod[0]["received"] == sent and prod[0]["gaps"] == 0
    missed = q.alerts(since=0)["alerts"]
    assert [a["seq"] for a in missed][: len(seqs)] == seqs[: len(missed)]
    pub.close()
    alerts.close()
