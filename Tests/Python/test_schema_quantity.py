"""The schema's optional "quantity" (docs/protocol.md §1, docs/tap.md "Taylor blame") against a real saliencyd.

A non-saliency quantity is part of the fingerprint (b"quantity\\0taylor\\0" after the layers), so:
the tap's fingerprint of a Taylor schema is the daemon's (its schema and rows are accepted, and
`saliencyctl replay` of the same schema file joins the same model); a Taylor stream and a saliency
stream of one network under one model name are two layouts (the second is schema_conflict, its rows
unknown_schema); status, `saliencyctl status`, snapshots and `saliencyctl state inspect` keep the
quantity; an unknown quantity is invalid_schema.
"""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import ctl_bin, fnv1a64, schema_fingerprint as conftest_fingerprint, wait_for
from saliency_tap import Publisher
from saliency_tap.cli import main as tap_cli
from saliency_tap.schema import schema_fingerprint, schema_json

LAYERS = [("conv1", 6), ("conv2", 10)]
K = sum(f for _, f in LAYERS)


def schema(model: str, quantity=None) -> dict:
    s = {"model": model, "layers": [{"name": n, "filters": f} for n, f in LAYERS]}
    if quantity is not None:
        s["quantity"] = quantity
    return s


def rows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(0.0, 0.5, size=(n, K)).astype(np.float32)


def publish(pub: Publisher, data: np.ndarray) -> None:
    for r in data:
        pub.publish(r, 0, 0, 1)


def rejected(d) -> dict:
    return d.status().get("rejected", {})


def test_tap_fingerprint_independent_values():
    # Computed independently (Tests/CoreTests/SchemaQuantityTests.swift has the same constants):
    # FNV-1a 64 of b"m\0a\x003\0b\x005\0" and of the same followed by b"quantity\0taylor\0".
    m = {"model": "m", "layers": [{"name": "a", "filters": 3}, {"name": "b", "filters": 5}]}
    assert schema_fingerprint(m) == 0xEB102410212D9B2D
    assert schema_fingerprint(dict(m, quantity="saliency")) == 0xEB102410212D9B2D
    assert schema_fingerprint(dict(m, quantity="taylor")) == 0x581B59BECE2CFEBD
    s = schema("net", "taylor")
    assert schema_fingerprint(s) == fnv1a64(b"quantity\0taylor\0", conftest_fingerprint("net", LAYERS))
    assert schema_fingerprint(schema("net")) == conftest_fingerprint("net", LAYERS)
    with pytest.raises(ValueError, match="quantity must be"):
        schema_fingerprint(schema("net", "blame"))


def test_tap_cli_fingerprint_prints_the_taylor_value(tmp_path, capsys):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"model": "m", "layers": [{"name": "a", "filters": 3}, {"name": "b", "filters": 5}],
                             "quantity": "taylor"}))
    assert tap_cli(["fingerprint", str(p)]) == 0
    assert capsys.readouterr().out.strip() == "581b59bece2cfebd"


def test_daemon_accepts_the_taps_taylor_fingerprint_and_says_taylor(saliencyd, tmp_path):
    d = saliencyd(calibration=100)
    s = schema("net", "taylor")
    pub = Publisher(d.endpoints["feed"], "net", s)
    try:
        assert pub.wait_for_subscriber(10.0)
        assert pub.fingerprint == schema_fingerprint(s) != conftest_fingerprint("net", LAYERS)
        publish(pub, rows(40))
        m = d.wait_rows("net", 40, timeout=30)
        assert m["quantity"] == "taylor", m
        assert m["fingerprint"] == format(pub.fingerprint, "016x"), m
        assert not rejected(d), rejected(d)
    finally:
        pub.close()

    # The Swift side reads the same schema file (saliencyctl replay): same fingerprint, so its rows
    # join the tap's model instead of being refused as another layout.
    (tmp_path / "net.schema.json").write_text(json.dumps(s))
    np.save(tmp_path / "more.npy", rows(25, seed=2))
    r = subprocess.run([str(ctl_bin()), "replay", str(tmp_path / "more.npy"), "--schema", str(tmp_path / "net.schema.json"),
                        "--feed", d.endpoints["feed"], "--query", d.endpoints["query"]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    m = d.wait_rows("net", 65, timeout=30)
    assert m["rows"] == 65 and m["quantity"] == "taylor"
    assert not rejected(d), rejected(d)
    assert len(d.status()["models"]) == 1

    # saliencyctl status shows the quantity column.
    r = subprocess.run([str(ctl_bin()), "status", "--query", d.endpoints["query"]], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    header = next(l for l in r.stdout.splitlines() if l.split()[:2] == ["model", "quantity"])
    line = next(l for l in r.stdout.splitlines() if l.split()[:1] == ["net"])
    assert line.split()[1] == "taylor", r.stdout
    assert header


@pytest.mark.parametrize("first", ["saliency", "taylor"])
def test_taylor_and_saliency_under_one_name_conflict(saliencyd, first):
    """Whichever stream comes first owns the name; the other is refused (schema_conflict) and its
    rows are unknown_schema; the live model's rows and quantity are untouched."""
    d = saliencyd(calibration=100)
    second = "taylor" if first == "saliency" else "saliency"
    pubs = {q: Publisher(d.endpoints["feed"], "shared", schema("shared", q if q == "taylor" else None))
            for q in (first, second)}
    try:
        assert pubs[first].fingerprint != pubs[second].fingerprint
        assert pubs[first].wait_for_subscriber(10.0)
        publish(pubs[first], rows(30))
        m = d.wait_rows("shared", 30, timeout=30)
        assert m["quantity"] == first

        assert pubs[second].wait_for_subscriber(10.0)
        publish(pubs[second], rows(12, seed=3))
        rej = wait_for(lambda: (lambda r: r if r.get("unknown_schema", 0) >= 12 else None)(rejected(d)), 20,
                       what="the second stream's rows counted unknown_schema")
        assert rej.get("schema_conflict", 0) >= 1, rej
        assert rej["unknown_schema"] == 12, rej
        models = d.status()["models"]
        assert len(models) == 1 and models[0]["rows"] == 30 and models[0]["quantity"] == first, models
        assert models[0]["fingerprint"] == format(pubs[first].fingerprint, "016x")
        assert "schema_conflict" in d.log_text() or "refused" in d.log_text()
    finally:
        for p in pubs.values():
            p.close()


def test_layout_change_replace_switches_the_quantity(saliencyd):
    d = saliencyd(calibration=100, config_sections={"limits": {"layout_change": "replace"}})
    plain = Publisher(d.endpoints["feed"], "sw", schema("sw"))
    taylor = Publisher(d.endpoints["feed"], "sw", schema("sw", "taylor"))
    try:
        assert plain.wait_for_subscriber(10.0)
        publish(plain, rows(10))
        assert d.wait_rows("sw", 10, timeout=30)["quantity"] == "saliency"
        plain.close()
        assert taylor.wait_for_subscriber(10.0)
        publish(taylor, rows(7, seed=4))
        # The name now routes to the Taylor layout (it calibrates from zero); the saliency engine
        # is not deleted by a replace (docs/operations.md), so status may list both under "sw".
        m = wait_for(lambda: [m for m in d.status()["models"] if m["model"] == "sw" and m["quantity"] == "taylor" and m["rows"] == 7],
                     20, what="the taylor layout replacing the saliency one")[0]
        assert m["fingerprint"] == format(taylor.fingerprint, "016x")
        assert not rejected(d).get("schema_conflict"), rejected(d)
    finally:
        plain.close()
        taylor.close()


def test_unknown_quantity_is_invalid_schema(saliencyd):
    d = saliencyd(calibration=100)
    with d.feed() as f:
        assert f.wait_for_subscriber()
        body = json.dumps(dict(schema("odd"), quantity="blame")).encode()
        f.schema_raw("odd", body)
        rej = wait_for(lambda: (lambda r: r if r.get("invalid_schema") else None)(rejected(d)), 20, what="invalid_schema")
        assert rej["invalid_schema"] == 1
    assert d.model("odd") is None
    wait_for(lambda: "is not known to this daemon (saliency, taylor)" in d.log_text(), 10,
             what="the log naming the known quantities")


def test_snapshot_keeps_the_taylor_quantity_and_fingerprint(saliencyd, tmp_path):
    d = saliencyd(calibration=100, state_dir=tmp_path / "state", snapshot_interval=3600)
    s = schema("snap", "taylor")
    pub = Publisher(d.endpoints["feed"], "snap", s)
    try:
        assert pub.wait_for_subscriber(10.0)
        publish(pub, rows(20))
        d.wait_rows("snap", 20, timeout=30)
    finally:
        pub.close()
    assert d.query({"op": "snapshot"}, timeout=10)["ok"]
    snap = tmp_path / "state" / "snapshot.bin"
    r = subprocess.run([str(ctl_bin()), "state", "inspect", str(snap), "--json"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    inspected = json.loads(r.stdout)["models"]
    assert [(m["model"], m["quantity"], m["fingerprint"]) for m in inspected] == [("snap", "taylor", format(schema_fingerprint(s), "016x"))]
    d.stop()
    d.start()
    m = d.wait_model("snap")
    assert m["quantity"] == "taylor" and m["rows"] == 20, m
    assert m["fingerprint"] == format(schema_fingerprint(s), "016x")
    # A restarted producer with the tap's fingerprint continues the restored model.
    pub = Publisher(d.endpoints["feed"], "snap", s)
    try:
        assert pub.wait_for_subscriber(10.0)
        publish(pub, rows(5, seed=9))
        assert d.wait_rows("snap", 25, timeout=30)["quantity"] == "taylor"
        assert not rejected(d), rejected(d)
    finally:
        pub.close()
