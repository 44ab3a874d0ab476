"""Regression tests for issue 9 (hardening): every finding of the issue, on a real saliencyd process
over ipc/loopback with real ZeroMQ clients. Each test is named after the finding it guards and
asserts the behaviour specified for the fix (limits, refusals with their reasons, bounded memory
and latency, durable state). Budgets: every loop is bounded by count and time; the file runs in a
few minutes on 2 cores.

Run against another binary with SALIENCYD_BIN=/path/to/saliencyd (saliencyctl next to it).
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from conftest import (MASK64, Daemon, Sampler, StatusPoller, fill_disk, fnv1a64, percentile, row_bytes, run_saliencyd,
                      schema_fingerprint, schema_json, small_tmpfs, toml_text, wait_for)

MB = 1 << 20
SMALL = [("a", 8), ("b", 8)]          # K = 16


# ---------------------------------------------------------------------------------------------
# helpers

def rows(rng, n, K, spike=None, factor=1000.0):
    """n lognormal rows (float32); `spike`: filter indices multiplied by `factor`."""
    r = np.exp(0.5 * rng.standard_normal((n, K))).astype(np.float32)
    if spike is not None:
        r[:, spike] *= factor
    return r


def rejected(st, reason):
    return st.get("rejected", {}).get(reason, 0)


def wait_rejected(d, reason, n, timeout=15.0):
    return wait_for(lambda: (lambda s: s if rejected(s, reason) >= n else None)(d.status(timeout=2.0)), timeout,
                    what=f"rejected[{reason}] >= {n}")


def model_names(st):
    return sorted(m["model"] for m in st["models"])


def calibrate_and_alert(d, p, rng, calibration=100, blocks=4, spike=(1, 5, 9, 13)):
    """Feeds `calibration` + 50 clean rows, then alternating spiked / clean blocks of 60 rows, so
    filters fire and resolve. Returns the number of rows sent."""
    K = p.K
    sent = 0
    for r in rows(rng, calibration + 50, K):
        p.publish(r)
        sent += 1
    for b in range(blocks):
        for r in rows(rng, 60, K, spike=list(spike) if b % 2 == 0 else None):
            p.publish(r)
            sent += 1
    d.wait_rows(p.model, sent, timeout=60)
    return sent


def alert_log_seqs(path: Path):
    """Seqs of the complete, parseable lines of an alert log, and whether every line parsed."""
    data = path.read_bytes() if path.exists() else b""
    seqs, clean = [], True
    for line in data.split(b"\n")[:-1]:
        try:
            seqs.append(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            clean = False
    if data and not data.endswith(b"\n"):
        clean = False
    return seqs, clean


def alert_line(seq: int, model: str = "m", filt: int = 1, status: str = "firing") -> str:
    """One alert-log line shaped like the daemon's own (protocol §3), for planting a long log."""
    layer, channel = ("a", filt) if filt < 8 else ("b", filt - 8)
    a = {"annotations": {"description": f"Saliency 757.5884 vs extreme threshold 2.8714244 (tail p = 0.006140351). "
                                        f"Inspect with: saliencyctl filter --model {model} {filt}",
                         "summary": f"{layer}[{channel}] (filter {filt}) exceeded its extreme threshold in 3 of the last 43 predictions"},
         "channel": channel, "endsAt": "0001-01-01T00:00:00Z", "exceedances": 3, "extreme_threshold": 2.8714245190130985,
         "filter": filt, "fingerprint": "15cfdca2a19d602a",
         "labels": {"alertname": "SalientFilter", "channel": str(channel), "filter": str(filt), "layer": layer, "model": model,
                    "severity": "warning"},
         "layer": layer, "model": model, "p": 0.0061403508771929825, "score": 2.211806811322216, "seq": seq,
         "startsAt": "2026-12-02T07:51:09.349Z", "status": status, "threshold": 1.9095285177230836,
         "value": 757.58837890625, "window": 43}
    return json.dumps(a, separators=(",", ":"))


def all_alerts(d, since=0, max_pages=50):
    """Every alert the `alerts` query serves after `since`, following `truncated` pages."""
    out = []
    for _ in range(max_pages):
        r = d.query({"op": "alerts", "since": since}, timeout=5.0)
        assert r.get("ok"), r
        out += r["alerts"]
        if not r.get("truncated") or not r["alerts"]:
            return out
        since = r["alerts"][-1]["seq"]
    raise AssertionError("alerts query kept saying truncated")


# =============================================================================================
# One schema message crashes it: filter counts whose sum overflows Int

OVERFLOWING_LAYOUTS = [
    [1, 9223372036854775807],                    # the example
    [9223372036854775807, 1],
    [4611686018427387904, 4611686018427387904],  # 2^62 + 2^62
    [9223372036854775807, 9223372036854775807, 9223372036854775807],
    [9223372036854775807],
    [18446744073709551615],                      # 2^64 - 1 (not an Int at all)
    [8388608, 8388609],                          # 2^24 + 1 in total: over the protocol's limit
]


def test_schema_with_overflowing_filter_counts_is_invalid_not_a_crash(saliencyd):
    d = saliencyd()
    with d.feed() as f:
        assert f.wait_for_subscriber()
        for i, counts in enumerate(OVERFLOWING_LAYOUTS):
            layers = [(f"l{j}", c) for j, c in enumerate(counts)]
            f.schema(f"ovf{i}", layers)                       # with its (correct) fingerprint
            f.schema(f"ovf{i}", layers, fingerprint=False)    # and without
        n = 2 * len(OVERFLOWING_LAYOUTS)
        st = wait_rejected(d, "invalid_schema", n, timeout=15)
    assert d.alive()
    assert rejected(st, "invalid_schema") == n
    assert model_names(st) == []
    # Still a working daemon: an honest model registers afterwards.
    p = d.producer("after", SMALL)
    assert p.wait_for_subscriber()
    for r in rows(np.random.default_rng(0), 5, 16):
        p.publish(r)
    d.wait_rows("after", 5, timeout=10)
    p.close()
    assert d.stop(30) == 0


# =============================================================================================
# One schema claims gigabytes: budgets checked before anything is allocated

def _over_budget_lines(d, model):
    return [l for l in d.log_lines() if model in l and ("over_budget" in l or "max_model_bytes" in l or "max_total_bytes" in l)]


def test_schema_of_2_19_and_2_24_filters_is_over_budget_and_allocates_nothing(saliencyd):
    d = saliencyd()
    rss0 = d.rss_bytes()
    sampler = Sampler(d, 0.05)
    sampler.start()
    try:
        with d.feed() as f:
            assert f.wait_for_subscriber()
            f.schema("big19", [("conv", 1 << 19)])          # ~3 GB at calibration 1000: refused
            st = wait_for(lambda: (lambda s: s if rejected(s, "over_budget") >= 1 or s["models"] else None)(d.status(timeout=3.0)),
                          30, what="a decision on the 2^19-filter schema")
            assert "big19" not in model_names(st), "2^19 filters (~3 GB of learned state) were admitted"
            assert rejected(st, "over_budget") == 1
            time.sleep(0.5)
            assert sampler.max < 300 * MB, f"RSS reached {sampler.max / MB:.0f} MB for a refused schema"
            lines = _over_budget_lines(d, "big19")
            assert len(lines) == 1, f"expected one log line for the refused schema, got {lines}"
            assert "max_model_bytes" in lines[0] and re.search(r"\d", lines[0]), lines[0]

            f.schema("big24", [("conv", 1 << 24)])          # the protocol's maximum: ~100 GB, refused
            st = wait_rejected(d, "over_budget", 2, timeout=30)
            assert model_names(st) == []
            time.sleep(0.5)
    finally:
        peak = sampler.stop()
    assert d.alive()
    assert peak < 300 * MB, f"RSS peaked at {peak / MB:.0f} MB (started at {rss0 / MB:.0f} MB)"
    assert d.stop(30) == 0


def test_budget_over_all_models_is_enforced(saliencyd):
    # calibration = 10000 makes each model's cost dominated by its calibration buffer
    # (K x 10000 x 4 bytes): a 1000-filter model costs 40-44 MB, a 2000-filter one 80-88 MB.
    d = saliencyd(calibration=10000, config=toml_text({"limits": {"max_model_bytes": 60_000_000, "max_total_bytes": 100_000_000}}))
    with d.feed() as f:
        assert f.wait_for_subscriber()
        f.schema("huge", [("conv", 2000)])                    # > max_model_bytes alone
        wait_rejected(d, "over_budget", 1)
        lines = _over_budget_lines(d, "huge")
        assert len(lines) == 1 and "max_model_bytes" in lines[0], lines
        f.schema("m1", [("conv", 1000)])
        f.schema("m2", [("conv", 1000)])
        wait_for(lambda: len(d.status()["models"]) == 2, 10, what="m1 and m2 admitted")
        f.schema("m3", [("conv", 1000)])                      # fits alone, not with m1 + m2
        st = wait_rejected(d, "over_budget", 2)
        assert model_names(st) == ["m1", "m2"]
        lines = _over_budget_lines(d, "m3")
        assert len(lines) == 1 and "max_total_bytes" in lines[0], lines
    assert d.stop(30) == 0


def test_default_budgets_admit_at_most_4_gib_of_models(saliencyd):
    # Defaults: max_model_bytes 1 GiB, max_total_bytes 4 GiB, max_models 16 (before the fix 16
    # models of ~2.6 GB each were admitted). 140,000 filters at calibration 1000 cost ~0.95 GB each
    # (with the model-level cross-fit's transient fold bank, docs/alerting.md §4): every one fits
    # alone, four fit together, the fifth and sixth are over budget.
    d = saliencyd()
    with d.feed() as f:
        assert f.wait_for_subscriber()
        for i in range(6):
            f.schema(f"big{i}", [("conv", 140_000)])
            wait_for(lambda: (lambda s: len(s["models"]) + rejected(s, "over_budget") >= i + 1)(d.status()), 20,
                     what=f"a decision on schema {i}")
            rss = d.rss_bytes()
            assert rss < 300 * MB, f"RSS {rss / MB:.0f} MB after {i + 1} schemas of 140k filters"
    st = d.status()
    assert model_names(st) == ["big0", "big1", "big2", "big3"], model_names(st)
    assert rejected(st, "over_budget") == 2
    assert "max_total_bytes" in d.log_text()
    assert d.stop(30) == 0


def test_memory_follows_what_is_learned_not_what_is_claimed(saliencyd):
    # 100,000 filters at calibration 1000: ~570 MB of learned state in full (admitted, < 1 GiB);
    # registering it must not allocate it; calibration rows do.
    d = saliencyd()
    time.sleep(0.3)
    rss0 = d.rss_bytes()
    K = 100_000
    p = d.producer("wide", [("l0", 50_000), ("l1", 50_000)])
    assert p.wait_for_subscriber()
    p.send_schema()
    d.wait_model("wide", timeout=30)
    time.sleep(0.5)
    rss_reg = d.rss_bytes()
    assert rss_reg - rss0 < 100 * MB, f"registering 100k filters raised RSS by {(rss_reg - rss0) / MB:.0f} MB"
    rng = np.random.default_rng(1)
    n = 250                                               # 100 MB of calibration rows
    for _ in range(n // 25):
        for r in rows(rng, 25, K):
            p.publish(r)
    d.wait_rows("wide", n, timeout=90)
    rss_rows = d.rss_bytes()
    assert rss_rows - rss_reg > 40 * MB, (
        f"RSS rose only {(rss_rows - rss_reg) / MB:.0f} MB for {n} calibration rows of {K} filters "
        f"({n * K * 4 / MB:.0f} MB of data): is the calibration buffer held?")
    p.close()
    assert d.stop(60) == 0


def test_small_models_cost_little_memory_and_engine_time(saliencyd):
    d = saliencyd()
    poller = StatusPoller(d.endpoints["query"], interval=0.01, timeout=1.0, context=d.ctx)
    poller.start()
    try:
        time.sleep(0.5)
        rss0 = d.rss_bytes()
        with d.feed() as f:
            assert f.wait_for_subscriber()
            for i in range(16):
                f.schema(f"tiny{i:02d}", [("a", 2), ("b", 2)])
                time.sleep(0.02)
            wait_for(lambda: len(d.status()["models"]) == 16, 10, what="16 tiny models")
        time.sleep(0.5)
        rss1 = d.rss_bytes()
    finally:
        poller.stop()
    assert rss1 - rss0 < 16 * MB, f"16 models of 4 filters raised RSS by {(rss1 - rss0) / MB:.1f} MB"
    assert not poller.failures, f"{len(poller.failures)} status queries unanswered within 1 s"
    assert poller.latencies and max(poller.latencies) < 0.1, (
        f"status took up to {max(poller.latencies) * 1000:.0f} ms while 4-filter schemas registered")


# =============================================================================================
# One schema stalls the engine: tens of thousands of layers

def test_schema_with_30000_layers_does_not_stall_the_engine(saliencyd):
    d = saliencyd(calibration=100)
    honest = d.producer("honest", SMALL)
    assert honest.wait_for_subscriber()
    rng = np.random.default_rng(2)
    for r in rows(rng, 20, 16):
        honest.publish(r)
    d.wait_rows("honest", 20)
    layers = [(f"l{i}", 1) for i in range(30_000)]
    body = schema_json("stall0", layers)
    assert len(body) < 1 << 20
    poller = StatusPoller(d.endpoints["query"], interval=0.05, timeout=1.0, context=d.ctx)
    poller.start()
    try:
        with d.feed() as f:
            assert f.wait_for_subscriber()
            for i in range(4):                            # the 4 models: > 5 minutes before
                f.schema_raw(f"stall{i}", schema_json(f"stall{i}", layers))
            st = wait_rejected(d, "invalid_schema", 4, timeout=20)
            assert not any(m.startswith("stall") for m in model_names(st))
            # Ingest goes on.
            for r in rows(rng, 50, 16):
                honest.publish(r)
            d.wait_rows("honest", 70, timeout=5)
            # max_layers = 4096 is the boundary: 4096 one-filter layers are a valid schema, 4097 not.
            f.schema("layers4097", [(f"l{i}", 1) for i in range(4097)])
            wait_rejected(d, "invalid_schema", 5, timeout=10)
            f.schema("layers4096", [(f"l{i}", 1) for i in range(4096)])
            d.wait_model("layers4096", timeout=10)
        time.sleep(0.3)
    finally:
        poller.stop()
    assert not poller.failures, f"status unanswered for 1 s {len(poller.failures)} times while huge schemas arrived"
    assert max(poller.latencies) < 1.0
    honest.close()
    t0 = time.monotonic()
    rc = d.stop(10)
    assert rc == 0, f"SIGTERM not honoured within 10 s (rc {rc})"
    assert time.monotonic() - t0 < 10


# =============================================================================================
# The query socket exhausts memory / stops answering

def _pipeline(dealers, body, seconds, max_sends):
    """Sends `body` on every DEALER as fast as libzmq takes it (never reading) for `seconds`."""
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sent < max_sends:
        progressed = False
        for s in dealers:
            for _ in range(200):
                try:
                    s.send_multipart([b"", body], zmq.NOBLOCK)
                    sent += 1
                    progressed = True
                except zmq.Again:
                    break
        if not progressed:
            time.sleep(0.01)
    return sent


def test_pipelining_dealers_that_never_read_keep_memory_bounded(saliencyd, tmp_path):
    # A long alert log (3,000 alerts, ~2.3 MB): before the fix one `alerts` reply carried all of it.
    state = tmp_path / "state"
    state.mkdir()
    (state / "alerts.jsonl").write_text("".join(alert_line(i + 1, filt=i % 16) + "\n" for i in range(3000)))
    d = saliencyd(transport="tcp", state_dir=state)
    # 4,096 producer ids announced by rejected frames (before the fix they all landed in the
    # producer table and every status reply carried them: 439 KB each).
    fp = schema_fingerprint("m", SMALL)
    neg = row_bytes(-np.ones(16, np.float32))
    with d.feed(nodrop=True) as f:
        assert f.wait_for_subscriber()
        f.schema("m", SMALL)
        time.sleep(0.2)
        for pid in range(1, 4097):
            f.pred("m", fp, pid * 0x9E3779B97F4A7C15, 12345, neg)
        wait_rejected(d, "negative", 4096, timeout=30)
    time.sleep(0.3)
    rss0 = d.rss_bytes()
    sampler = Sampler(d, 0.1)
    poller = StatusPoller(d.endpoints["query"], interval=0.02, timeout=1.0, context=d.ctx)
    def dealers(n=8):
        out = []
        for _ in range(n):
            s = d.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 100_000)
            s.setsockopt(zmq.RCVHWM, 100_000)
            s.setsockopt(zmq.RCVBUF, 4096)                 # and read nothing
            s.connect(d.endpoints["query"])
            out.append(s)
        return out

    sampler.start()
    poller.start()
    group = []
    try:
        t0 = time.monotonic()
        group = dealers()
        sent_alerts = _pipeline(group, b'{"op":"alerts","since":0}', 10, 2_000_000)
        for s in group:
            s.close(linger=0)                               # their unsent backlog goes with them
        time.sleep(1.0)
        t1 = time.monotonic()
        group = dealers()
        sent_status = _pipeline(group, b'{"op":"status"}', 15, 2_000_000)
        t2 = time.monotonic()
        time.sleep(1.0)
    finally:
        poller.stop()
        peak = sampler.stop()
        for s in group:
            s.close(linger=0)
    assert d.alive()
    p99_alerts, p99_status = poller.p(99, t0, t1), poller.p(99, t1, t2)
    print(f"dealers pipelined {sent_alerts} alerts then {sent_status} status requests; RSS {rss0 / MB:.0f} -> peak {peak / MB:.0f} MB; "
          f"REQ status p99 {p99_alerts * 1000:.1f} ms during the alerts phase, {p99_status * 1000:.1f} ms during the status phase, "
          f"{len(poller.failures)} timeouts, largest status reply {poller.max_reply_bytes} B")
    assert peak < 300 * MB, f"RSS peaked at {peak / MB:.0f} MB under pipelining DEALERs"
    assert not poller.failures, f"{len(poller.failures)} status queries of a well-behaved client timed out (1 s)"
    assert p99_status < 0.1, f"well-behaved client's status p99 = {p99_status * 1000:.0f} ms while DEALERs pipeline status"
    st = d.status()
    assert st.get("producer_count", None) == 0, "rejected frames registered producers"
    assert d.stop(30) == 0


def test_well_behaved_client_never_loses_a_reply(saliencyd):
    """Guard for the query limits (not a finding of the issue; passes before the fix): a client that
    sends one request at a time and reads every reply must get every reply, however low the
    per-peer high-water marks are set."""
    d = saliencyd(transport="tcp", calibration=100)
    p = d.producer("m", SMALL)
    assert p.wait_for_subscriber()
    for r in rows(np.random.default_rng(15), 150, 16):
        p.publish(r)
    d.wait_rows("m", 150)
    p.close()
    reqs = [{"op": "status"}, {"op": "filter", "model": "m", "filter": 3}, {"op": "top", "model": "m", "k": 5}]
    lost = []
    t0 = time.monotonic()
    for i in range(6000):
        if time.monotonic() - t0 > 60 or len(lost) >= 3:
            break
        try:
            d.query(reqs[i % 3], timeout=1.0)
        except TimeoutError:
            lost.append(i)
    assert not lost, f"requests {lost} (of {i + 1} sequential ones) got no reply within 1 s"
    assert d.stop(30) == 0


def test_tcp_connection_flood_with_random_bytes_does_not_stop_queries(saliencyd):
    d = saliencyd(transport="tcp")
    host, port = d.endpoints["query"][len("tcp://"):].rsplit(":", 1)
    port = int(port)
    poller = StatusPoller(d.endpoints["query"], interval=0.02, timeout=1.0, context=d.ctx)
    poller.start()
    rnd = random.Random(9)
    opened = 0
    try:
        time.sleep(0.3)
        deadline = time.monotonic() + 40
        batch = []
        while opened < 1500 and time.monotonic() < deadline:
            try:
                c = socket.create_connection((host, port), timeout=2)
            except OSError:
                time.sleep(0.01)
                continue
            opened += 1
            try:
                c.sendall(rnd.randbytes(rnd.randint(1, 2048)))
            except OSError:
                pass
            batch.append(c)
            if len(batch) >= 150:                         # at most 150 open at once
                for x in batch:
                    x.close()
                batch = []
        for x in batch:
            x.close()
        time.sleep(0.5)
    finally:
        poller.stop()
    assert opened >= 1000, f"only {opened} connections could be opened"
    assert not poller.failures, f"status unanswered within 1 s {len(poller.failures)} times during a flood of {opened} connections"
    after = []
    for _ in range(20):
        try:
            _, dt = d.query_timed({"op": "status"}, timeout=1.0)
        except TimeoutError:
            dt = float("inf")
        after.append(dt)
    assert max(after) < 0.1, f"right after the flood status took up to {max(after) * 1000:.0f} ms ({after.count(float('inf'))} unanswered within 1 s)"
    print(f"{opened} garbage connections: status p99 {poller.p(99) * 1000:.1f} ms max {max(poller.latencies) * 1000:.1f} ms")


def test_alerts_reply_is_bounded_and_continues_with_since(saliencyd):
    d = saliencyd(calibration=100)
    p = d.producer("m", SMALL)
    assert p.wait_for_subscriber()
    calibrate_and_alert(d, p, np.random.default_rng(3))
    p.close()
    assert d.stop(30) == 0
    log = d.state_dir / "alerts.jsonl"
    templates = [json.loads(l) for l in log.read_text().splitlines()]
    assert templates
    n = 3000                                             # ~750 B each: > 2 MB in all
    with open(log, "w") as f:
        for i in range(n):
            a = dict(templates[i % len(templates)])
            a["seq"] = i + 1
            f.write(json.dumps(a, separators=(",", ":")) + "\n")
    for s in ("snapshot.bin", "snapshot.prev.bin"):
        (d.state_dir / s).unlink(missing_ok=True)
    d.start()
    raw = d.query_raw(b'{"op":"alerts","since":0}', timeout=10)
    assert len(raw) <= 1 << 20, f"alerts reply is {len(raw)} bytes (max_reply_bytes = 1 MiB)"
    first = json.loads(raw)
    assert first["ok"] and first.get("truncated") is True, "a cut reply must say truncated: true"
    got = all_alerts(d, 0)
    assert [a["seq"] for a in got] == list(range(1, n + 1))
    assert d.stop(30) == 0


# =============================================================================================
# Configuration that passes --check-config and then crashes

BAD_VALUES = [
    ("resend_interval", {"alerts": {"resend_interval": "@raw:inf"}}),
    ("resend_interval", {"alerts": {"resend_interval": "@raw:nan"}}),
    ("resend_interval", {"alerts": {"resend_interval": 1e300}}),
    ("resend_interval", {"alerts": {"resend_interval": 0.01}}),
    ("resend_interval", {"alerts": {"resend_interval": 86401.0}}),
    ("snapshot_interval", {"state": {"snapshot_interval": "@raw:inf"}}),
    ("snapshot_interval", {"state": {"snapshot_interval": 1e300}}),
    ("snapshot_interval", {"state": {"snapshot_interval": 0.5}}),
    ("snapshot_interval", {"state": {"snapshot_interval": 86401.0}}),
    ("calibration", {"pot": {"calibration": 1_000_000_000_000}}),
    ("calibration", {"pot": {"calibration": 1_000_001}}),
    ("drift_window", {"pot": {"calibration": 1000, "drift_window": 999}}),
    ("drift_window", {"pot": {"calibration": 1000, "drift_window": 990}}),
    ("drift_window", {"pot": {"calibration": 300, "drift_window": 100000}}),
]


def _ipc_flags(tmp_path):
    return ["--feed", f"ipc://{tmp_path}/cf", "--alerts", f"ipc://{tmp_path}/ca", "--query", f"ipc://{tmp_path}/cq",
            "--state-dir", str(tmp_path / "cstate"), "--metrics", ""]


def test_out_of_range_configuration_is_refused_at_check_and_at_start(tmp_path):
    failures = []
    cfg = tmp_path / "bad.toml"
    for key, sections in BAD_VALUES:
        cfg.write_text(toml_text(sections))
        r = run_saliencyd("--check-config", "--config", str(cfg), timeout=20)
        if r.returncode != 2 or key not in r.stderr:
            failures.append(f"--check-config {sections}: exit {r.returncode}, stderr {r.stderr.strip()[:200]!r}")
            continue
        r = run_saliencyd("--config", str(cfg), *_ipc_flags(tmp_path), timeout=5)
        if r.returncode != 2 or key not in r.stderr:
            failures.append(f"start with {sections}: exit {r.returncode}, stderr {r.stderr.strip()[-200:]!r}")
    assert not failures, "\n".join(failures)
    # The boundaries themselves are valid.
    cfg.write_text(toml_text({"alerts": {"resend_interval": 0.1}, "state": {"snapshot_interval": 86400.0},
                              "pot": {"calibration": 1_000_000}}))
    r = run_saliencyd("--check-config", "--config", str(cfg), timeout=20)
    assert r.returncode == 0, r.stderr


BAD_FLAGS = [
    ("snapshot", ["--snapshot-interval", "inf"]),
    ("snapshot", ["--snapshot-interval", "1e300"]),
    ("snapshot", ["--snapshot-interval", "0.5"]),
    ("snapshot", ["--snapshot-interval", "nan"]),
    ("calibration", ["--calibration", "1000000000000"]),
    ("calibration", ["--calibration", "5"]),
]


def test_out_of_range_flags_are_refused_at_check_and_at_start(tmp_path):
    failures = []
    for key, flags in BAD_FLAGS:
        r = run_saliencyd("--check-config", *flags, timeout=20)
        if r.returncode != 2 or key not in r.stderr:
            failures.append(f"--check-config {flags}: exit {r.returncode}, stderr {r.stderr.strip()[:200]!r}")
            continue
        r = run_saliencyd(*_ipc_flags(tmp_path), *flags, timeout=5)
        if r.returncode != 2 or key not in r.stderr:
            failures.append(f"start with {flags}: exit {r.returncode}, stderr {r.stderr.strip()[-200:]!r}")
    assert not failures, "\n".join(failures)


def test_drift_window_that_passes_the_check_admits_schemas(saliencyd, tmp_path):
    """Either --check-config refuses a drift_window, or a daemon running with it admits a schema
    (before the fix, values such as these passed the check and then refused every schema)."""
    cfg = tmp_path / "dw.toml"
    for dw in (150, 250, 270, 280, 290, 299):
        sections = {"pot": {"calibration": 300, "drift_window": dw}}
        cfg.write_text(toml_text(sections))
        r = run_saliencyd("--check-config", "--config", str(cfg), timeout=20)
        if r.returncode == 2:
            assert "drift_window" in r.stderr, r.stderr
            continue
        assert r.returncode == 0, r.stderr
        d = saliencyd(config=toml_text(sections))
        p = d.producer("dw", SMALL)
        assert p.wait_for_subscriber()
        p.publish(rows(np.random.default_rng(dw), 1, 16)[0])
        try:
            d.wait_rows("dw", 1, timeout=10)
        except AssertionError:
            raise AssertionError(f"drift_window = {dw} at calibration 300 passed --check-config but the daemon refused the schema: "
                                 f"rejected {d.status()['rejected']}")
        p.close()
        assert d.stop(30) == 0


CORRUPT_FILES = [
    ("NUL", b'[feed]\nreceive_hwm = 2000\n\x00\n[security]\ncurve = true\nserver_secret_key_file = "/nonexistent.key"\n'),
    ("UTF-8", b'[monitor]\nlog_level = "info"\n# caf\xe9 \xff\xfe\n[security]\ncurve = true\n'),
    ("empty", b""),
]


def test_nul_invalid_utf8_and_empty_config_files_are_invalid(tmp_path):
    cfg = tmp_path / "c.toml"
    failures = []
    for word, data in CORRUPT_FILES:
        cfg.write_bytes(data)
        for args, timeout in ((["--check-config", "--config", str(cfg)], 20), (["--config", str(cfg), *_ipc_flags(tmp_path)], 5)):
            r = run_saliencyd(*args, timeout=timeout)
            if r.returncode != 2 or word.lower() not in r.stderr.lower():
                failures.append(f"{word} file, {args[0]}: exit {r.returncode}, stderr {r.stderr.strip()[-200:]!r}")
    assert not failures, "\n".join(failures)


def test_sighup_with_an_invalid_file_keeps_the_running_configuration(saliencyd):
    d = saliencyd(calibration=100, endpoint_flags=False, config_sections={"alerts": {"resend_interval": 1.0}})
    sub = d.ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"alert.firing.")
    sub.connect(d.endpoints["alerts"])
    p = d.producer("hup", SMALL)
    assert p.wait_for_subscriber()
    rng = np.random.default_rng(4)
    for r in rows(rng, 150, 16):
        p.publish(r)
    for r in rows(rng, 40, 16, spike=[3]):                 # filter 3 fires and stays firing (no more rows)
        p.publish(r)
    d.wait_rows("hup", 190)
    wait_for(lambda: d.status()["firing"] >= 1, 10, what="a firing alert")

    def resends(seconds):
        times = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if sub.poll(100, zmq.POLLIN):
                topic, body = sub.recv_multipart()
                if json.loads(body).get("resent"):
                    times.append(time.monotonic())
        return times

    before = resends(3.5)
    assert len(before) >= 2, f"resend_interval = 1 s but {len(before)} resends in 3.5 s"
    bad_files = [b"[alerts]\nresend_interval = inf\n", b"\x00\x01garbage\xff\xfe\n", b"",
                 b"[alerts]\nresend_interval = 0.01\n", b"[alerts\nresend_interval = \n", b"\xc3\x28 = 1\n"]
    for i, data in enumerate(bad_files, start=1):
        d.write_config(data)
        d.sighup()
        wait_for(lambda: d.log_text().count("configuration reload failed") >= i, 10,
                 what=f"'configuration reload failed' after SIGHUP with {data[:30]!r}")
        assert d.alive()
        assert d.status(timeout=2.0)["ok"]
    after = resends(3.5)
    assert len(after) >= 2, f"after refused reloads the resend interval changed: {len(after)} resends in 3.5 s"
    gaps = np.diff(after)
    assert gaps.size and gaps.max() < 2.0, f"resend gaps {gaps}"
    assert "configuration reloaded" not in d.log_text()
    sub.close()
    p.close()
    assert d.stop(30) == 0


# =============================================================================================
# Silent data loss

def test_alert_log_survives_disk_full_without_torn_lines_or_phantom_alerts(saliencyd, tmp_path):
    K = 64
    groups = iter([[g, g + 16, g + 32, g + 48] for g in range(16)])   # fresh filters for every burst

    def bursts(p, rng, n):
        """n spiked blocks of 40 rows on fresh filters, each followed by 60 clean rows (fire, then resolve)."""
        for _ in range(n):
            for r in rows(rng, 40, K, spike=next(groups)):
                p.publish(r)
            for r in rows(rng, 60, K):
                p.publish(r)
        return 100 * n

    with small_tmpfs(tmp_path / "state", 256) as state:
        d = saliencyd(state_dir=state, calibration=100, snapshot_interval=3600)
        try:
            p = d.producer("full", [("a", 32), ("b", 32)])
            assert p.wait_for_subscriber()
            rng = np.random.default_rng(5)
            sent = 0
            for r in rows(rng, 150, K):
                p.publish(r)
                sent += 1
            sent += bursts(p, rng, 2)
            d.wait_rows("full", sent)
            n_a = d.status()["alert_seq"]
            assert n_a >= 4, "no alerts before the disk filled up"

            filler = fill_disk(state)                          # disk full: appends fail (some half-way)
            sent += bursts(p, rng, 4)
            d.wait_rows("full", sent)
            st = d.status()
            pers = st.get("persistence")
            assert pers is not None, "status has no persistence section"
            assert pers["alert_log_failures"] >= 1 and isinstance(pers["alert_log_error"], str), pers
            on_disk, clean = alert_log_seqs(state / "alerts.jsonl")
            assert clean, "the alert log was left with a torn line"
            served = [a["seq"] for a in all_alerts(d, 0)]
            assert set(served) <= set(on_disk), f"served alerts that are not on disk: {sorted(set(served) - set(on_disk))}"
            snap = d.query({"op": "snapshot"}, timeout=10)
            assert not snap["ok"], "a snapshot on a full disk reported success"
            pers = d.status()["persistence"]
            assert pers["snapshot_failures"] >= 1 and isinstance(pers["snapshot_error"], str), pers

            seq_full = d.status()["alert_seq"]
            filler.unlink()                                   # space again
            sent += bursts(p, rng, 4)
            d.wait_rows("full", sent)
            on_disk, clean = alert_log_seqs(state / "alerts.jsonl")
            assert clean, "alert log has a torn or merged line after the disk had space again"
            assert on_disk == sorted(on_disk) and len(set(on_disk)) == len(on_disk)
            served = [a["seq"] for a in all_alerts(d, 0)]
            assert set(served) <= set(on_disk), f"served alerts that are not on disk: {sorted(set(served) - set(on_disk))}"
            assert on_disk and on_disk[-1] > seq_full, "no alert logged after the disk had space again"
            p.close()
            assert d.stop(30) == 0
            d.start()
            again = [a["seq"] for a in all_alerts(d, 0)]
            lost = sorted(set(served) - set(again))
            assert not lost, f"alerts served before the restart are gone after it: {lost}"
            assert d.stop(30) == 0
        finally:
            d.kill()


def test_failed_final_snapshot_exits_nonzero(saliencyd, tmp_path):
    with small_tmpfs(tmp_path / "state", 256) as state:
        d = saliencyd(state_dir=state, calibration=100, snapshot_interval=3600)
        try:
            p = d.producer("fin", [("a", 24), ("b", 40)])
            assert p.wait_for_subscriber()
            for r in rows(np.random.default_rng(6), 150, 64):
                p.publish(r)
            d.wait_rows("fin", 150)
            p.close()
            fill_disk(state)
            rc = d.stop(30)
            assert rc is not None, "daemon did not stop within 30 s"
            assert rc != 0, "the final snapshot could not be written (disk full) and the daemon still exited 0"
            assert "snapshot" in d.log_text().lower()
        finally:
            d.kill()


def test_two_daemons_on_one_state_directory(saliencyd):
    d1 = saliencyd()
    assert (d1.state_dir / "lock").exists()
    d2 = saliencyd(start=False, state_dir=d1.state_dir)
    d2.start(wait=False)
    rc = d2.wait_exit(15)
    assert rc == 1, f"second daemon on {d1.state_dir}: exit {rc} (expected 1)\n{d2.log_tail()}"
    text = d2.log_text()
    assert "in use" in text and str(d1.pid) in text, text[-500:]
    assert d1.status()["ok"]
    assert d1.stop(30) == 0


def _craft_out_of_range_filter(snapshot: Path, filters, out_of_range: int) -> int:
    """Rewrites active-alert filter indices in a snapshot to `out_of_range` (same digit count) and
    fixes the checksum. Returns how many were rewritten."""
    data = bytearray(snapshot.read_bytes())
    assert data[:4] == b"SALS"
    n = 0
    for j in filters:
        pat = re.compile(rb'"filter":%d(?=[,}])' % j)
        new, k = pat.subn(b'"filter":%d' % out_of_range, bytes(data[24:]))
        assert len(new) == len(data) - 24
        data[24:] = new
        n += k
    struct.pack_into("<Q", data, 16, fnv1a64(bytes(data[24:])))
    snapshot.write_bytes(bytes(data))
    return n


def test_snapshot_with_valid_checksum_and_out_of_range_filter_is_refused(saliencyd):
    d = saliencyd(calibration=100, snapshot_interval=3600)
    p = d.producer("phantom", [("a", 24), ("b", 40)])         # K = 64
    assert p.wait_for_subscriber()
    rng = np.random.default_rng(7)
    for r in rows(rng, 150, 64):
        p.publish(r)
    for r in rows(rng, 40, 64, spike=[30, 50]):
        p.publish(r)
    d.wait_rows("phantom", 190)
    active = wait_for(lambda: (lambda r: r["alerts"] if len(r["alerts"]) >= 2 else None)(d.query({"op": "alerts", "active": True})),
                      10, what="two firing alerts")
    assert {a["filter"] for a in active} == {30, 50}
    p.close()
    assert d.stop(30) == 0
    (d.state_dir / "snapshot.prev.bin").unlink(missing_ok=True)
    assert _craft_out_of_range_filter(d.state_dir / "snapshot.bin", [30, 50], 99) >= 2
    d.start()
    aside = [x.name for x in d.state_dir.iterdir() if x.name.startswith("snapshot.bin.rejected-")]
    assert aside, f"crafted snapshot not moved aside: {sorted(x.name for x in d.state_dir.iterdir())}"
    act = d.query({"op": "alerts", "active": True})["alerts"]
    assert all(a.get("filter") is None or a["filter"] < 64 for a in act), f"phantom alerts: {act}"
    st = d.status()
    assert st["firing"] == len(act)
    m = d.model("phantom")
    assert m is None, "the refused snapshot's model was restored"
    assert d.stop(30) == 0


BAD_SEQS = ["18446744073709551615", "1e30", "-1", "0"]


def test_alert_log_line_with_out_of_range_seq_is_dropped_at_start(saliencyd):
    d = saliencyd(calibration=100)
    p = d.producer("seqs", SMALL)
    assert p.wait_for_subscriber()
    calibrate_and_alert(d, p, np.random.default_rng(8))
    p.close()
    assert d.stop(30) == 0
    log = d.state_dir / "alerts.jsonl"
    good = log.read_text().splitlines()
    last = json.loads(good[-1])["seq"]
    template = good[-1]
    failures = []
    for bad in BAD_SEQS:
        line = re.sub(r'"seq":\d+', f'"seq":{bad}', template)
        log.write_text("\n".join(good + [line]) + "\n")
        lines0 = len(d.log_lines())
        try:
            d.start(timeout=15)
        except Exception as e:                            # crashed or never answered
            failures.append(f"seq {bad}: {str(e)[-300:]}")
            d.kill()
            continue
        time.sleep(0.3)
        st = d.status()
        served = [a["seq"] for a in all_alerts(d, 0)]
        if st["alert_seq"] != last:
            failures.append(f"seq {bad}: numbering continues at {st['alert_seq'] + 1}, not {last + 1}")
        if not served or served[-1] != last or any(not 0 < s <= last for s in served):
            failures.append(f"seq {bad}: served seqs {served[:3]}...{served[-3:]}")
        new_lines = d.log_lines()[lines0:]
        if not any(("warning" in l or "error" in l) and "alert" in l.lower() for l in new_lines):
            failures.append(f"seq {bad}: no warning about the dropped line")
        if d.stop(30) != 0:
            failures.append(f"seq {bad}: unclean stop")
    assert not failures, "\n".join(failures)


def test_stale_snapshot_temp_files_are_removed_at_start(saliencyd, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    stale = ["snapshot.bin.new", "snapshot.bin.new.tmp.4242", "snapshot.bin.tmp.31337", "alerts.jsonl.tmp.777"]
    for n in stale:
        (state / n).write_bytes(os.urandom(1000))
    (state / "operator-notes.txt").write_text("keep me\n")
    d = saliencyd(state_dir=state)
    left = [n for n in stale if (state / n).exists()]
    assert not left, f"stale temp files left at start: {left}"
    assert (state / "operator-notes.txt").read_text() == "keep me\n"
    assert d.stop(30) == 0


def test_snapshot_bin_that_is_a_directory_is_moved_aside(saliencyd, tmp_path):
    state = tmp_path / "state"
    (state / "snapshot.bin").mkdir(parents=True)
    (state / "snapshot.bin" / "junk").write_text("x")
    d = saliencyd(state_dir=state)
    assert not (state / "snapshot.bin").is_dir(), "snapshot.bin is still a directory after start"
    kept = [x for x in state.iterdir() if x.is_dir() and (x / "junk").exists()]
    assert kept, f"the directory was deleted, not moved aside: {sorted(x.name for x in state.iterdir())}"
    for i in range(3):                                   # every later snapshot succeeds (rotation included)
        r = d.query({"op": "snapshot"}, timeout=10)
        assert r.get("ok"), f"snapshot {i + 1} failed: {r}"
        assert (state / "snapshot.bin").is_file()
    assert d.stop(30) == 0


# =============================================================================================
# Feed abuse

def test_rejected_forged_frame_does_not_touch_the_producer_table(saliencyd):
    d = saliencyd()
    p = d.producer("seq", SMALL, producer_id=0x1234_5678_9ABC_DEF0)
    assert p.wait_for_subscriber()
    rng = np.random.default_rng(10)
    for r in rows(rng, 10, 16):                         # seq 0..9
        p.publish(r)
    d.wait_rows("seq", 10)
    neg = row_bytes(-np.ones(16, np.float32))
    with d.feed(nodrop=True) as f:
        assert f.wait_for_subscriber()
        f.pred("seq", p.fingerprint, p.producer_id, MASK64, neg)      # forged, rejected (negative)
        f.pred("seq", p.fingerprint, p.producer_id, 5000, b"\x00" * 12)  # forged, rejected (wrong_width)
        for pid in range(1, 101):                                       # unknown ids, all rejected
            f.pred("seq", p.fingerprint, pid, 7, neg)
        wait_rejected(d, "negative", 101)
        wait_rejected(d, "wrong_width", 1)
    for r in rows(rng, 10, 16):                         # seq 10..19
        p.publish(r)
    d.wait_rows("seq", 20)
    st = d.status()
    assert st["gaps"] == 0, f"a rejected forged frame counted {st['gaps']} gaps"
    mine = [x for x in st["producers"] if int(x["producer"], 16) == p.producer_id]
    assert mine and mine[0]["last_sequence"] == 19 and mine[0]["received"] == 20 and mine[0]["reordered"] == 0, mine
    assert st.get("producer_count") == 1, f"rejected frames entered the producer table: producer_count {st.get('producer_count')}"
    # Gap counting still works: skip 5.
    p.sequence += 5
    p.publish(rows(rng, 1, 16)[0])
    d.wait_rows("seq", 21)
    assert d.status()["gaps"] == 5
    p.close()


def test_producer_table_and_status_reply_are_bounded(saliencyd):
    d = saliencyd()
    fp = schema_fingerprint("many", [("a", 4)])
    payload = row_bytes(np.ones(4, np.float32))
    n = 3000
    with d.feed(nodrop=True) as f:
        assert f.wait_for_subscriber()
        f.schema("many", [("a", 4)])
        time.sleep(0.2)
        for i in range(n):
            f.pred("many", fp, 0xABCDEF0000000000 + i, 0, payload)
        d.wait_rows("many", n, timeout=30)
    raw = d.query_raw(b'{"op":"status"}')
    st = json.loads(raw)
    assert "producer_count" in st, "status has no producer_count"
    assert 1 <= st["producer_count"] <= 1024, st["producer_count"]
    assert len(st["producers"]) <= 32, len(st["producers"])
    assert len(raw) < 64 * 1024, f"status reply is {len(raw)} bytes"


# Log lines are rate-limited: the flood runs once per module (fixture) and the "suppressed" summary,
# which comes with the next event after the minute, is checked by the last test of the file.

@pytest.fixture(scope="module")
def log_flood(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("flood"), "flood")
    d.start()
    try:
        lines0 = len(d.log_lines())
        fp = schema_fingerprint("flood", [("a", 4)])
        payload = row_bytes(np.ones(4, np.float32))
        neg = row_bytes(-np.ones(4, np.float32))
        t0 = time.monotonic()
        with d.feed(nodrop=True) as f:
            assert f.wait_for_subscriber()
            f.schema("flood", [("a", 4)])
            time.sleep(0.2)
            for i in range(100_000):                     # one producer, every other seq missing
                f.pred("flood", fp, 0x5EED, 2 * i, payload)
            for i in range(100_000):                     # 100k new producers
                f.pred("flood", fp, 0x1_0000_0000 + i, 0, payload)
            for i in range(2000):                        # rejected input
                f.pred("flood", fp, 0x5EED, 300_000 + i, neg)
            for i in range(2000):                        # refused schemas
                f.schema(f"junk{i}", [("a", 0)])
            d.wait_rows("flood", 200_000, timeout=120)
            wait_rejected(d, "invalid_schema", 2000, timeout=30)
        info = {"daemon": d, "t0": t0, "lines0": lines0, "fp": fp, "payload": payload}
        yield info
    finally:
        d.cleanup()


def test_gap_and_new_producer_log_lines_are_rate_limited(log_flood):
    d = log_flood["daemon"]
    time.sleep(0.5)
    added = len(d.log_lines()) - log_flood["lines0"]
    assert added < 300, f"{added} log lines for 200k gapped/new-producer frames and 4k bad inputs"
    st = d.status()
    sup = st.get("log_suppressed")
    total = sum(sup.values()) if isinstance(sup, dict) else sup
    assert isinstance(total, int) and total > 1000, f"status log_suppressed = {sup!r}"


# =============================================================================================
# Schemas under a live model's name, model slots, junk that survives restarts

def test_schema_with_another_layout_under_a_live_name_is_refused(saliencyd):
    d = saliencyd(calibration=100)
    p = d.producer("live", SMALL)
    assert p.wait_for_subscriber()
    rng = np.random.default_rng(11)
    for r in rows(rng, 120, 16):
        p.publish(r)
    before = d.wait_rows("live", 120)
    assert before["phase"] == "monitoring"
    f0 = d.query({"op": "filter", "model": "live", "filter": 15})
    assert f0["ok"]
    with d.feed() as f:
        assert f.wait_for_subscriber()
        f.schema("live", [("x", 32)])
        f.schema("live", [("a", 8), ("b", 9)])
        st = wait_rejected(d, "schema_conflict", 2)
    m = d.model("live")
    assert m["filters"] == 16 and m["fingerprint"] == before["fingerprint"], m
    assert [x for x in st["models"] if x["model"] == "live"] and len(st["models"]) == 1
    assert d.query({"op": "filter", "model": "live", "filter": 15})["ok"]
    r = d.query({"op": "filter", "model": "live", "filter": 20})
    assert not r["ok"] and r["error"]["code"] == "not_found"
    assert d.query({"op": "top", "model": "live", "k": 16})["ok"]
    for r in rows(rng, 10, 16):                        # the honest producer is still accepted
        p.publish(r)
    d.wait_rows("live", 130)
    p.close()


def test_junk_schemas_do_not_survive_restarts(saliencyd):
    d = saliencyd(calibration=100)
    p = d.producer("live", SMALL)
    assert p.wait_for_subscriber()
    for r in rows(np.random.default_rng(12), 50, 16):
        p.publish(r)
    d.wait_rows("live", 50)
    with d.feed() as f:
        assert f.wait_for_subscriber()
        for i in range(15):
            f.schema(f"junk{i:02d}", [("a", 2), ("b", 2)])
        wait_for(lambda: len(d.status()["models"]) == 16, 10, what="16 models")
        f.schema("junk15", [("a", 2), ("b", 2)])
        wait_rejected(d, "too_many_models", 1)
    p.close()
    assert d.stop(30) == 0
    d.start()
    st = d.status()
    assert model_names(st) == ["live"], f"junk schemas survived the restart: {model_names(st)}"
    assert st["models"][0]["rows"] == 50
    assert d.stop(30) == 0


def test_schema_never_fed_expires(saliencyd):
    d = saliencyd(calibration=100, config=toml_text({"limits": {"calibrating_idle_expiry": 2}}))
    p = d.producer("fed", SMALL)
    assert p.wait_for_subscriber()
    rng = np.random.default_rng(13)
    p.publish(rows(rng, 1, 16)[0])
    with d.feed() as f:
        assert f.wait_for_subscriber()
        f.schema("never", [("a", 4)])
        d.wait_model("never")
    deadline = time.monotonic() + 12
    gone = False
    while time.monotonic() < deadline:
        p.publish(rows(rng, 1, 16)[0])                  # keeps "fed" alive
        if "never" not in model_names(d.status()):
            gone = True
            break
        time.sleep(0.25)
    assert gone, "a schema never fed was still listed 12 s after registration (calibrating_idle_expiry = 2)"
    assert "fed" in model_names(d.status())
    assert any("model expired" in l and "never" in l for l in d.log_lines())
    p.close()


def test_layer_metric_series_are_bounded(saliencyd):
    d = saliencyd(calibration=100, metrics=True)
    rng = np.random.default_rng(14)
    pubs = []
    for m in ("wide1", "wide2"):
        p = d.producer(m, [(f"l{i}", 1) for i in range(2048)])
        assert p.wait_for_subscriber()
        for r in rows(rng, 110, 2048):
            p.publish(r)
        pubs.append(p)
    d.wait_rows("wide1", 110)
    d.wait_rows("wide2", 110)

    def series():
        return [l for l in d.metrics_text().splitlines() if l.startswith("saliencyd_layer_extreme_exceedances_total{")]
    time.sleep(6)                                       # pushed every 5 s
    s = series()
    assert s, "no per-layer series at all"
    assert len(s) <= 2048 + 2, f"{len(s)} per-layer series (limits.max_layer_series = 2048)"
    for p in pubs:
        p.close()


# =============================================================================================
# (last, so that the minute it needs has mostly passed) the suppressed-lines summary

def test_suppressed_log_lines_are_counted_in_a_later_line(log_flood):
    d = log_flood["daemon"]
    remaining = log_flood["t0"] + 61 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    with d.feed(nodrop=True) as f:
        assert f.wait_for_subscriber()
        f.pred("flood", log_flood["fp"], 0x5EED, 10_000_000, log_flood["payload"])   # another gap
        f.pred("flood", log_flood["fp"], 0x2_0000_0000, 0, log_flood["payload"])     # another new producer

        def summary():
            return [l for l in d.log_lines() if "suppressed" in l and re.search(r"\d{3,}", l)]
        lines = wait_for(summary, 15, what="a log line counting suppressed lines")
    assert lines
