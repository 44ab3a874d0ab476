"""saliency-tap off the request path: sampling, the bounded queue, the rate cap, the background worker
and the publisher's counters (against a bound SUB socket standing in for the daemon)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
import zmq
from torch import nn

from conftest import free_port
from saliency_tap import Publisher, SaliencyComputer, Tap, schema_from_model, unpack_header

torch.set_num_threads(1)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


@pytest.fixture
def feed():
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"pred.")
    ep = f"tcp://127.0.0.1:{free_port()}"
    sub.bind(ep)
    yield ep, sub
    sub.close()


def make_tap(ep, sub, **kw):
    torch.manual_seed(0)
    model = Small().eval()
    tap = Tap.connect(model, "small", ep, **kw)
    deadline = time.monotonic() + 5
    while not tap.publisher.wait_for_subscriber(0.05):
        sub.poll(10, zmq.POLLIN)
        assert time.monotonic() < deadline, "no subscription"
    return model, tap


def drain(sub, n, timeout=20.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        if sub.poll(100, zmq.POLLIN):
            f = sub.recv_multipart()
            out.append((unpack_header(f[1]), np.frombuffer(f[2], "<f4")))
    return out


def test_sampled_rows_are_exact_and_sequences_contiguous(feed):
    ep, sub = feed
    model, tap = make_tap(ep, sub, sample_rate=0.25, seed=7, max_batch=8)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(200, 3, 8, 8, generator=g)
    queued = 0
    for i in range(0, 200, 8):
        out = tap(xs[i:i + 8], sample_ids=list(range(i, i + 8)))      # serve + submit
        torch.testing.assert_close(out, model(xs[i:i + 8]))
        assert out.grad_fn is None
    assert tap.flush(30)
    m = tap.metrics()
    assert m["published"] + m["sampled_out"] == 200
    assert 25 <= m["published"] <= 75          # Binomial(200, 0.25): mean 50, sd 6.1
    assert m["dropped_queue_full"] == m["rate_limited"] == m["error"] == 0
    rows = drain(sub, m["published"])
    assert len(rows) == m["published"]
    assert [h.sequence for h, _ in rows] == list(range(len(rows)))   # sampled-out rows take no number
    ids = [h.sample_id for h, _ in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    ref = SaliencyComputer(model, method="vmap").compute(xs[ids])
    got = np.stack([r for _, r in rows])
    np.testing.assert_allclose(got, ref.saliency, rtol=1e-5, atol=1e-7 * ref.saliency.max())
    assert [h.predicted for h, _ in rows] == ref.predicted.tolist()
    assert all(h.target_kind == 0 for h, _ in rows)
    tap.close()


def test_full_queue_drops_are_counted_never_block_and_take_no_sequence(feed):
    ep, sub = feed
    model, tap = make_tap(ep, sub, queue_rows=4, max_batch=2)
    x = torch.randn(1, 3, 8, 8)
    done = threading.Event()

    def serve():
        for i in range(64):
            tap.submit(x, torch.tensor([i % 3]), sample_ids=[i])
        done.set()

    with tap._pub_lock:                      # the worker can compute but not publish: the queue fills
        t = threading.Thread(target=serve)
        t.start()
        assert done.wait(10), "submit blocked while the worker was stuck"
        m = tap.metrics()
        assert m["queued_rows"] <= 4
    assert tap.flush(30)
    m = tap.metrics()
    assert m["published"] + m["dropped_queue_full"] == 64
    assert m["dropped_queue_full"] >= 64 - 4 - 2 - 2     # queue + one batch in the worker (+ one reserved)
    assert tap.publisher.dropped == m["dropped_queue_full"]
    rows = drain(sub, m["published"])
    assert [h.sequence for h, _ in rows] == list(range(m["published"]))
    assert all(h.target_kind == 1 for h, _ in rows)
    assert [h.target for h, _ in rows] == [h.sample_id % 3 for h, _ in rows]
    text = tap.prometheus_text()
    assert f'outcome="dropped_queue_full"}} {m["dropped_queue_full"]}' in text
    assert f'outcome="published"}} {m["published"]}' in text
    tap.close()


def test_rate_cap(feed):
    ep, sub = feed
    model, tap = make_tap(ep, sub, max_per_second=20, queue_rows=10_000)
    x = torch.randn(10, 3, 8, 8)
    t0 = time.monotonic()
    for _ in range(50):
        tap.submit(x)
    elapsed = time.monotonic() - t0
    assert tap.flush(60)
    m = tap.metrics()
    assert m["published"] + m["rate_limited"] == 500
    assert 1 <= m["published"] <= 20 + 20 * elapsed + 1
    tap.close()


def test_worker_survives_errors_and_counts_them(feed):
    ep, sub = feed
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bad batch")
        return torch.nn.functional.cross_entropy(out, out.argmax(1), reduction="none")

    model, tap = make_tap(ep, sub, loss_fn=loss_fn, logits_fn=lambda o: o, max_batch=4)
    x = torch.randn(4, 3, 8, 8)
    tap.submit(x)
    assert tap.flush(30)
    tap.submit(x)
    assert tap.flush(30)
    m = tap.metrics()
    assert m["error"] == 4 and m["published"] == 4 and "bad batch" in m["last_error"]
    rows = drain(sub, 4)
    assert [h.sequence for h, _ in rows] == [0, 1, 2, 3]
    tap.close()


def test_zero_rate_and_close_without_worker(feed):
    ep, sub = feed
    model, tap = make_tap(ep, sub, sample_rate=0.0)
    assert tap.submit(torch.randn(5, 3, 8, 8)) == 0
    assert tap.metrics()["sampled_out"] == 5 and tap._worker is None
    tap.close()


def test_dict_inputs_are_batched_by_the_worker(feed):
    ep, sub = feed

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv1d(2, 3, 3, padding=1)
            self.b = nn.Conv1d(1, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc((torch.tanh(self.a(x["sig"])) + torch.tanh(self.b(x["aux"]))).mean(2))

    torch.manual_seed(1)
    model = TwoInputs().eval()
    tap = Tap.connect(model, "two", ep, max_batch=16)
    while not tap.publisher.wait_for_subscriber(0.05):
        sub.poll(10, zmq.POLLIN)
    xs = {"sig": torch.randn(12, 2, 10), "aux": torch.randn(12, 1, 10)}
    for i in range(0, 12, 3):
        tap.submit({k: v[i:i + 3] for k, v in xs.items()}, sample_ids=[i, i + 1, i + 2])
    assert tap.flush(30)
    rows = drain(sub, 12)
    ref = SaliencyComputer(model, method="loop").compute(xs)
    got = np.stack([r for _, r in sorted(rows, key=lambda hr: hr[0].sample_id)])
    np.testing.assert_allclose(got, ref.saliency, rtol=1e-5, atol=1e-7 * ref.saliency.max())
    tap.close()
