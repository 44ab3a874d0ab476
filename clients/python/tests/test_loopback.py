"""Publisher -> SUB over tcp://127.0.0.1, alert SUB and query REQ against fakes; all waits bounded."""
import json
import socket
import threading
import time

import numpy as np
import pytest
import torch
import zmq

from saliency_tap import (AlertSubscriber, Publisher, QueryClient, QueryError, Recorder, Tap, load_feed,
                          schema_fingerprint, schema_from_model, unpack_header)
from saliency_tap.cli import main as cli_main


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def handshake(pub, sub, timeout=5.0):
    """Wait until `pub` has seen `sub`'s subscription. A bound socket attaches a new peer only when its
    own thread calls into it (libzmq processes commands in poll/recv), as the daemon's loop does, so
    poll the SUB too while waiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sub.poll(10, zmq.POLLIN)
        if pub.wait_for_subscriber(0.05):
            return True
    return False


def recv(sock, timeout=5.0):
    assert sock.poll(int(timeout * 1000), zmq.POLLIN), "timed out waiting for a message"
    return sock.recv_multipart()


@pytest.fixture
def feed_sub():
    """A daemon-like SUB socket that binds the feed endpoint."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"pred.")
    sub.setsockopt(zmq.SUBSCRIBE, b"schema.")
    ep = f"tcp://127.0.0.1:{free_port()}"
    sub.bind(ep)
    yield ep, sub
    sub.close()


def test_pub_sub_round_trip(tiny_model, feed_sub):
    ep, sub = feed_sub
    schema = schema_from_model(tiny_model, "tiny")
    with Publisher(ep, "tiny", schema, producer_id=77) as pub:
        assert handshake(pub, sub), "slow joiner: no subscription within 5 s"
        tap = Tap(tiny_model, pub)
        x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])
        batch = tap.observe(x, y, sample_ids=[10, 11, 12])

        topic, body = recv(sub)
        assert topic == b"schema.tiny"
        got = json.loads(body)
        assert got["fingerprint"] == format(schema_fingerprint(schema), "016x")
        assert [l["filters"] for l in got["layers"]] == [3, 5, 5]
        for i in range(3):
            frames = recv(sub)
            assert frames[0] == b"pred.tiny" and len(frames) == 3
            h = unpack_header(frames[1])
            assert h.producer_id == 77 and h.sequence == i and h.sample_id == 10 + i
            assert h.fingerprint == schema_fingerprint(schema)
            assert h.target == int(y[i]) and h.target_kind == 1 and h.predicted == int(batch.predicted[i])
            assert abs(h.confidence - float(batch.confidence[i])) < 1e-7
            assert abs(h.timestamp_ns - time.time_ns()) < 60e9
            np.testing.assert_array_equal(np.frombuffer(frames[2], "<f4"), batch.saliency[i])


def test_schema_resent_periodically_and_on_new_subscriber(feed_sub):
    ep, sub = feed_sub
    schema = {"model": "m", "layers": [{"name": "a", "filters": 3}, {"name": "b", "filters": 5}]}
    with Publisher(ep, "m", schema, schema_interval=0.2) as pub:
        assert handshake(pub, sub)
        pub.publish(np.ones(8, np.float32))
        assert recv(sub)[0] == b"schema.m"
        assert recv(sub)[0] == b"pred.m"
        pub.publish(np.ones(8, np.float32))
        assert recv(sub)[0] == b"pred.m"   # not due yet
        time.sleep(0.3)
        pub.publish(np.ones(8, np.float32))
        assert recv(sub)[0] == b"schema.m"  # due
        assert recv(sub)[0] == b"pred.m"



def test_late_subscriber_gets_schema_before_prediction():
    ep = f"tcp://127.0.0.1:{free_port()}"
    schema = {"model": "m", "layers": [{"name": "a", "filters": 3}, {"name": "b", "filters": 5}]}
    with Publisher(ep, "m", schema, connect=False, schema_interval=3600) as pub:
        pub.publish(np.ones(8, np.float32))  # nobody listening: schema + pred are lost
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(ep)
        assert pub.wait_for_subscriber(5.0)
        pub.publish(np.ones(8, np.float32))
        assert recv(sub)[0] == b"schema.m"
        frames = recv(sub)
        assert frames[0] == b"pred.m" and unpack_header(frames[1]).sequence == 1
        sub.close()


def test_publish_validates_rows(feed_sub):
    ep, _ = feed_sub
    schema = {"model": "m", "layers": [{"name": "a", "filters": 3}, {"name": "b", "filters": 5}]}
    with Publisher(ep, "m", schema) as pub:
        for bad in [np.ones(7), np.full(8, np.nan), -np.ones(8)]:
            with pytest.raises(ValueError):
                pub.publish(bad)
        assert pub.sequence == 0
    with pytest.raises(ValueError):
        Publisher(ep, "m", dict(schema, fingerprint="0123456789abcdef"))


def test_recorder_round_trip(tmp_path, tiny_model):
    schema = schema_from_model(tiny_model, "tiny")
    rec = Recorder(str(tmp_path / "feeds" / "ref"), schema)
    rows = np.random.default_rng(0).random((5, 13), dtype=np.float32)
    rec.append(rows[:2], predicted=[1, 2], target=[1, 3], target_kind=1, confidence=[0.9, 0.8], label=[1, 3])
    rec.append(rows[2:], predicted=[0, 0, 1], target=[0, 0, 1], target_kind=0, confidence=[0.5, 0.6, 0.7], label=[2, 0, 1])
    rec.save()
    r, s, m = load_feed(str(tmp_path / "feeds" / "ref"))
    np.testing.assert_array_equal(r, rows)
    assert r.dtype == np.float32
    assert s["fingerprint"] == schema["fingerprint"] and s["layers"] == schema["layers"]
    assert m["rows"] == 5 and m["predicted"] == [1, 2, 0, 0, 1] and m["target_kind"] == [1, 1, 0, 0, 0]
    assert m["label"] == [1, 3, 2, 0, 1]
    np.testing.assert_allclose(m["confidence"], [0.9, 0.8, 0.5, 0.6, 0.7], rtol=1e-6)


def test_cli_publish_npy_then_record(tmp_path):
    schema = {"model": "m", "layers": [{"name": "a", "filters": 3}, {"name": "b", "filters": 5}]}
    rows = np.random.default_rng(1).random((20, 8), dtype=np.float32)
    rec = Recorder(str(tmp_path / "src"), schema)
    rec.append(rows, predicted=np.arange(20) % 3, target=np.arange(20) % 3, confidence=0.5)
    rec.save()
    ep = f"tcp://127.0.0.1:{free_port()}"
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", cli_main(
        ["record", str(tmp_path / "dst"), "--endpoint", ep, "--count", "20", "--timeout", "15"])))
    t.start()
    time.sleep(0.2)
    assert cli_main(["publish-npy", str(tmp_path / "src"), "--endpoint", ep, "--wait", "5"]) == 0
    t.join(20)
    assert result.get("rc") == 0
    r, s, m = load_feed(str(tmp_path / "dst"))
    np.testing.assert_array_equal(r, rows)
    assert m["sample_id"] == list(range(20)) and m["sequence"] == list(range(20))
    assert m["predicted"] == [i % 3 for i in range(20)]


def test_alert_subscriber():
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = free_port()
    pub.bind(f"tcp://127.0.0.1:{port}")
    with AlertSubscriber(f"tcp://127.0.0.1:{port}") as sub:
        assert pub.poll(5000, zmq.POLLIN) and pub.recv() == b"\x01alert."
        pub.send_multipart([b"other.x", b"{}"])
        alert = {"seq": 42, "status": "firing", "labels": {"model": "m", "layer": "conv2"}, "filter": 21}
        pub.send_multipart([b"alert.firing.m.conv2", json.dumps(alert).encode()])
        got = sub.recv(timeout=5)
        assert got["seq"] == 42 and got["filter"] == 21 and got["_topic"] == "alert.firing.m.conv2"
        assert sub.last_seq == 42
        assert sub.recv(timeout=0.1) is None
    pub.close()


def test_query_client_against_fake_rep():
    ctx = zmq.Context.instance()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    port = free_port()
    rep.bind(f"tcp://127.0.0.1:{port}")
    seen = []

    def serve(n):
        for _ in range(n):
            if not rep.poll(5000, zmq.POLLIN):
                return
            req = json.loads(rep.recv())
            seen.append(req)
            if req["op"] == "filter" and req.get("filter") == 999:
                rep.send(json.dumps({"ok": False, "error": {"code": "not_found", "message": "no filter 999"}}).encode())
            else:
                rep.send(json.dumps({"ok": True, "echo": req}).encode())

    t = threading.Thread(target=serve, args=(5,))
    t.start()
    with QueryClient(f"tcp://127.0.0.1:{port}", timeout=5) as q:
        assert q.status()["echo"] == {"op": "status"}
        assert q.top("m", k=5, by="zscore")["echo"] == {"op": "top", "model": "m", "k": 5, "by": "zscore"}
        assert q.filter("m", layer="conv2", channel=3)["echo"] == {"op": "filter", "model": "m", "layer": "conv2", "channel": 3}
        assert q.alerts(since=7)["echo"] == {"op": "alerts", "since": 7}
        with pytest.raises(QueryError) as e:
            q.filter("m", 999)
        assert e.value.code == "not_found"
    t.join(5)
    rep.close()


def test_query_client_timeout_recovers():
    port = free_port()
    ctx = zmq.Context.instance()
    q = QueryClient(f"tcp://127.0.0.1:{port}", timeout=0.2)
    with pytest.raises(TimeoutError):
        q.status()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind(f"tcp://127.0.0.1:{port}")

    def serve():
        if rep.poll(5000, zmq.POLLIN):
            rep.recv()
            rep.send(b'{"ok": true, "uptime_s": 1}')

    t = threading.Thread(target=serve)
    t.start()
    q.timeout = 5
    assert q.status()["uptime_s"] == 1  # the socket was recreated after the timeout
    t.join(5)
    q.close()
    rep.close()
