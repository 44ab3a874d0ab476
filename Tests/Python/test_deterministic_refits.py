"""Deterministic replay (`[pot] idle_refits = false`, docs/operations.md "Deterministic replay").

By default the engine thread also refits due filters when the feed is idle, so WHEN a filter's GPD
is refit, relative to the rows, depends on load: its extreme threshold changes at another row,
extremes are kept out of the moments, and two daemons fed the same rows learn different state (the
cause of a flaky test_soak.py comparison). With `idle_refits = false` only the per-row budget
(`refits_per_row`) refits, and the learned state is a function of the accepted rows alone.

Real daemons, real ZeroMQ. `refits_per_row` is small (0.05) so that due filters queue up: idle
time then has work to do, and a daemon that uses it is visibly ahead (`due` drained, more `refits`).
"""
from __future__ import annotations

import time

import numpy as np

from conftest import toml_text, wait_for

MODEL = "replay"
LAYERS = [("conv1", 24), ("conv2", 40)]
K = 64
CALIBRATION = 300
ROWS = 2400
CHUNK = 150                 # the paused feeds stop after every CHUNK rows…
PAUSE = 0.3                 # …for at least this long once the daemons have absorbed them
PRODUCER = 0x5EED_0000_0000_0001
SHIFTED = [3, 30, 50]


def config(idle_refits: bool) -> str:
    return toml_text({"pot": {"calibration": CALIBRATION, "refits_per_row": 0.05, "idle_refits": idle_refits},
                      "alerts": {"resend_interval": 1.0}})


def rows(n=ROWS, seed=7):
    """Lognormal saliencies with bursts on a few filters (extremes, alerts, freezes, refits)."""
    rng = np.random.default_rng(seed)
    scale = 0.5 + rng.random(K)
    r = (scale * np.exp(0.5 * rng.standard_normal((n, K)))).astype(np.float32)
    for start in range(CALIBRATION + 300, n, 600):
        r[start:start + 40, SHIFTED] *= 40
    return r


def learned(d) -> dict:
    """Everything the daemon learned about the model, as it answers queries (no timestamps)."""
    out = {"filters": {}}
    for j in range(K):
        r = d.query({"op": "filter", "model": MODEL, "filter": j})
        assert r["ok"], r
        out["filters"][j] = r
    m = d.model(MODEL)
    out["status"] = {k: m[k] for k in ("rows", "refits", "due", "firing", "model_alert", "extremes_by_layer", "phase")}
    r = d.query({"op": "alerts", "since": 0})
    assert r["ok"] and not r.get("truncated"), r
    out["alerts"] = [(a["status"], a.get("filter"), a.get("exceedances"), a.get("value")) for a in r["alerts"]]
    return out


def differences(a: dict, b: dict) -> list:
    out = [f"status {a['status']} vs {b['status']}"] if a["status"] != b["status"] else []
    if a["alerts"] != b["alerts"]:
        out.append(f"alerts {a['alerts']} vs {b['alerts']}")
    for j in range(K):
        fa, fb = a["filters"][j], b["filters"][j]
        bad = [f"{k} {fa.get(k)!r} vs {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k) and k != "recent"]
        if fa["recent"] != fb["recent"]:
            bad.append("recent")
        if bad:
            out.append(f"filter {j}: " + ", ".join(bad))
    return out


def test_without_idle_refits_paused_and_fast_feeds_learn_identical_state(saliencyd):
    data = rows()
    fast = saliencyd(config=config(False))
    paused = saliencyd(config=config(False))
    idle = saliencyd(config=config(True))     # the contrast: today's default, fed like `paused`
    for d in (fast, paused, idle):
        assert "idle_refits" in d.log_text(), d.log_tail()

    pf = fast.producer(MODEL, LAYERS, producer_id=PRODUCER)
    assert pf.wait_for_subscriber()
    for r in data:
        pf.publish(r)
    fast.wait_rows(MODEL, ROWS, timeout=60)

    pp = paused.producer(MODEL, LAYERS, producer_id=PRODUCER)
    pi = idle.producer(MODEL, LAYERS, producer_id=PRODUCER)
    assert pp.wait_for_subscriber() and pi.wait_for_subscriber()
    contrast = []               # (rows, paused refits/due, idle refits/due) after each pause
    for start in range(0, ROWS, CHUNK):
        for r in data[start:start + CHUNK]:
            pp.publish(r)
            pi.publish(r)
        end = min(start + CHUNK, ROWS)
        paused.wait_rows(MODEL, end, timeout=30)
        idle.wait_rows(MODEL, end, timeout=30)
        t0 = time.monotonic()
        # The idle daemon refits every due filter while nothing arrives (16 per loop turn); wait
        # for that rather than trusting a fixed pause on a loaded machine.
        wait_for(lambda: idle.model(MODEL)["due"] == 0, 20, what="the idle daemon's due filters refit in idle time")
        time.sleep(max(0.0, PAUSE - (time.monotonic() - t0)))
        if end > CALIBRATION:
            a, b = paused.model(MODEL), idle.model(MODEL)
            contrast.append((end, a["refits"], a["due"], b["refits"], b["due"]))

    # Determinism: a feed that paused 16 times and one that never did end bit-identical.
    a, b = learned(paused), learned(fast)
    assert a["status"]["rows"] == ROWS and a["status"]["phase"] == "monitoring", a["status"]
    assert a["alerts"], "the bursts raised no alert: the freeze/unfreeze path was not exercised"
    assert sum(f["extremes"] for f in a["filters"].values()) > 0
    diffs = differences(a, b)
    assert not diffs, "idle_refits = false, same rows, different timing:\n" + "\n".join(diffs)

    # The contrast: with idle refits the paused daemon drained its queue in every pause, so at the
    # same row its refit count ran ahead of the one that waits for rows — and its learned state
    # ends up different. (Were the comparison above made with idle_refits = true, it would fail.)
    print("\nrows, refits/due without idle refits, refits/due with:", contrast)
    assert any(ar < br and ad > 0 for _, ar, ad, br, _ in contrast), contrast
    diffs_idle = differences(learned(idle), b)
    print(f"idle_refits = true vs the fast feed: {len(diffs_idle)} differences, e.g. {diffs_idle[:2]}")
    assert diffs_idle, "idle refits changed nothing the queries show: this test no longer shows the timing dependence"

    # SIGHUP turns idle refits on at runtime: the queue the deterministic daemon kept drains.
    due = a["status"]["due"]
    assert due > 0, "nothing due at the end: the reload below would show nothing"
    time.sleep(PAUSE)
    assert paused.model(MODEL)["due"] == due, "idle_refits = false, yet the idle daemon refit"
    paused.write_config(config(True))
    paused.sighup()
    wait_for(lambda: "configuration reloaded" in paused.log_text(), 10, what="configuration reloaded")
    assert "pot.idle_refits changed" in paused.log_text()
    wait_for(lambda: paused.model(MODEL)["due"] == 0, 10, what="due filters refit in idle time after the reload")
    assert paused.model(MODEL)["refits"] == a["status"]["refits"] + due
    for p in (pf, pp, pi):
        p.close()
    for d in (fast, paused, idle):
        assert d.stop(30) == 0
