"""Common-mode-free scorers in the daemon (issue 13, item 2; docs/statistics.md "Common-mode-free scorers").

Two real saliencyd processes get the same feed: one monitors raw rows (`[pot] transform = "none"`), the
other the per-layer log-residual (`transform = "layer-logres"`). Rows carry a common mode (a row factor and
a per-layer factor, as a prediction's confidence does). After calibration, a whole layer is multiplied by
1000 (pure common mode): the raw daemon fires filter alerts for that layer, the transformed one fires none.
A single filter made 40x larger than its layer-mates is ranked first by `top --by logres-pot`; asking a
daemon for a scorer of a transform it does not monitor is a clear error that names the configured transform.
"""
import json
import subprocess

import numpy as np

from conftest import ctl_bin, toml_text, wait_for

MODEL = "cm"
LAYERS = [("conv1", 16), ("conv2", 24)]
K = 40
CAL = 1000
CONV2 = list(range(16, 40))


def start(saliencyd, transform):
    return saliencyd(calibration=CAL, config_sections={"pot": {"transform": transform, "q": 1e-3, "level": 0.95}})


def rows_with_common_mode(rng, n):
    """s_ij = c_i * d_{i,layer(j)} * e_ij: row factor c, row-and-layer factor d, filter noise e."""
    scales = 0.5 + (np.arange(K) % 5) * 0.3
    c = rng.lognormal(0.0, 0.7, size=(n, 1))
    d = np.concatenate([np.repeat(rng.lognormal(0.0, 0.4, size=(n, 1)), w, axis=1) for _, w in LAYERS], axis=1)
    e = rng.lognormal(0.0, 0.3, size=(n, K)) * scales
    return (c * d * e).astype(np.float32)


def feed(d, prod, rows):
    before = (d.model(MODEL) or {}).get("rows", 0)
    for r in rows:
        prod.publish(r.tobytes())
    d.wait_rows(MODEL, before + len(rows), timeout=120)


def filter_alerts(d):
    return [a for a in d.query({"op": "alerts", "since": 0})["alerts"] if a["labels"].get("alertname") == "SalientFilter"]


def ctl(*args):
    return subprocess.run([str(ctl_bin()), *args], capture_output=True, text=True, timeout=30)


def test_layer_common_mode_alerts_raw_pot_but_not_layer_logres(saliencyd):
    raw, cm = start(saliencyd, "none"), start(saliencyd, "layer-logres")
    rng = np.random.default_rng(13)
    prods = {raw: raw.producer(MODEL, LAYERS), cm: cm.producer(MODEL, LAYERS)}
    assert all(p.wait_for_subscriber(20) for p in prods.values()), "a daemon did not subscribe"
    cal = rows_with_common_mode(rng, CAL)
    for d in (raw, cm):
        feed(d, prods[d], cal)
        assert d.model(MODEL)["phase"] == "monitoring"

    # The common mode: conv2 as a whole x1000 for 200 predictions.
    shifted = rows_with_common_mode(rng, 200)
    shifted[:, CONV2] *= 1000
    for d in (raw, cm):
        feed(d, prods[d], shifted)
    fired_raw = wait_for(lambda: {a["filter"] for a in filter_alerts(raw) if a["status"] == "firing"} or None, 10,
                         what="raw pot alerts for the shifted layer")
    assert fired_raw <= set(CONV2) and len(fired_raw) >= 12, f"raw pot fired for {sorted(fired_raw)}"
    assert filter_alerts(cm) == [], f"layer-logres alerted on a pure common mode: {filter_alerts(cm)}"
    st = cm.model(MODEL)
    assert st["firing"] == 0 and st["rows"] == CAL + 200

    # One filter 40x above its layer-mates (on top of the layer's common mode): first by logres-pot.
    target = 16 + 7
    last = rows_with_common_mode(rng, 1)
    last[:, CONV2] *= 1000
    last[0, target] *= 40
    feed(cm, prods[cm], last)
    out = ctl("top", "--model", MODEL, "--by", "logres-pot", "--k", "3", "--json", "--query", cm.endpoints["query"])
    assert out.returncode == 0, out.stderr
    top = [json.loads(l) for l in out.stdout.splitlines()]
    assert top[0]["filter"] == target and top[0]["layer"] == "conv2" and top[0]["channel"] == 7, top
    out = ctl("top", "--model", MODEL, "--by", "logres-pot", "--k", "3", "--query", cm.endpoints["query"])
    assert out.returncode == 0 and "by logres-pot" in out.stdout, out.stdout + out.stderr
    z = cm.query({"op": "top", "model": MODEL, "k": 1, "by": "logres-zscore"})
    assert z["by"] == "logres-zscore" and z["top"][0]["filter"] == target, z
    # Plain pot on a transformed model is answered on the rows the bank monitors, and says so.
    p = cm.query({"op": "top", "model": MODEL, "k": 1})
    assert p["by"] == "logres-pot" and p["top"][0]["filter"] == target, p
    # The alerts and filter replies speak of the transformed value.
    f = cm.query({"op": "filter", "model": MODEL, "filter": target})
    assert f["recent"][0]["value"] > f["extreme_threshold"], f

    # Kept up, the filter fires an alert that speaks of the transformed value (and gives the raw one).
    more = rows_with_common_mode(rng, 40)
    more[:, CONV2] *= 1000
    more[:, target] *= 40
    feed(cm, prods[cm], more)
    fired = wait_for(lambda: [a for a in filter_alerts(cm) if a["status"] == "firing"] or None, 10, what="alert for the filter")
    assert {a["filter"] for a in fired} == {target}, fired
    assert "layer-logres value" in fired[0]["annotations"]["description"] and "(saliency " in fired[0]["annotations"]["description"], fired[0]
    assert fired[0]["value"] > fired[0]["extreme_threshold"] and fired[0]["value"] < 100 * 24 + 1, fired[0]

    # A scorer of a transform the daemon does not monitor: a clear error naming what is configured.
    err = raw.query({"op": "top", "model": MODEL, "k": 3, "by": "logres-pot"})
    assert err.get("ok") is False or "error" in err, err
    msg = json.dumps(err)
    assert 'pot.transform = \\"none\\"' in msg and "layer-logres" in msg and "analyze --by logres-pot" in msg, msg
    out = ctl("top", "--model", MODEL, "--by", "ratio-pot", "--query", cm.endpoints["query"])
    assert out.returncode != 0 and "layer-logres" in out.stderr and 'transform = "layer-ratio"' in out.stderr, out.stderr
    for d in (raw, cm):
        assert d.stop(timeout=30) == 0


def test_a_snapshot_of_another_transform_is_not_restored(saliencyd):
    d = start(saliencyd, "layer-logres")
    rng = np.random.default_rng(5)
    prod = d.producer(MODEL, LAYERS)
    assert prod.wait_for_subscriber(20), "the daemon did not subscribe"
    feed(d, prod, rows_with_common_mode(rng, CAL + 10))
    assert d.stop(timeout=30) == 0
    # `state inspect` says what the state was learned with.
    r = ctl("state", "inspect", str(d.state_dir / "snapshot.bin"), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["models"][0]
    assert (m["model"], m["transform"], m["watched_tails"]) == (MODEL, "layer-logres", "upper"), m
    table = ctl("state", "inspect", str(d.state_dir / "snapshot.bin")).stdout
    assert "transform" in table and "layer-logres" in table, table
    d.write_config(toml_text({"pot": {"transform": "none", "q": 1e-3, "level": 0.95}}))
    d.start()
    prod.close()
    prod = d.producer(MODEL, LAYERS)
    assert prod.wait_for_subscriber(20), "the restarted daemon did not subscribe"
    feed(d, prod, rows_with_common_mode(rng, 5))
    st = d.model(MODEL)
    assert st["phase"] == "calibrating" and st["rows"] == 5, st
    log = d.log_text()
    refused = [l for l in log.splitlines() if "snapshot refused" in l]
    assert refused and "layer-logres" in refused[0] and "pot.transform" in refused[0], log[-3000:]
    assert d.stop(timeout=30) == 0


def test_analyze_by_logres_pot_is_blind_to_a_layer_factor(tmp_path):
    rng = np.random.default_rng(3)
    ref = rows_with_common_mode(rng, 800)
    x = rows_with_common_mode(rng, 2)
    x[:, CONV2] *= 1000          # common mode only
    x[1, 20] *= 40               # and, in row 1, one filter above its layer
    np.save(tmp_path / "ref.npy", ref)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "schema.json").write_text(json.dumps({"model": MODEL, "layers": [{"name": n, "filters": f} for n, f in LAYERS]}))
    base = ["analyze", "--schema", str(tmp_path / "schema.json"), "--reference", str(tmp_path / "ref.npy"),
            "--input", str(tmp_path / "x.npy"), "--top", "3", "--q", "1e-3", "--json"]
    raw = [json.loads(l) for l in ctl(*base).stdout.splitlines()]
    assert all(e["filter"] in CONV2 and e["score"] > 3 for e in raw[0]["top"]), raw[0]
    cm = [json.loads(l) for l in ctl(*base, "--by", "logres-pot").stdout.splitlines()]
    assert max(e["score"] for e in cm[0]["top"]) < 3, cm[0]
    assert cm[1]["top"][0]["filter"] == 20 and cm[1]["top"][0]["score"] > 3, cm[1]
    help_text = ctl("analyze", "--help").stdout + ctl("top", "--help").stdout
    for name in ("logres-pot", "logres-zscore", "ratio-pot", "ratio-zscore"):
        assert help_text.count(name) >= 2, name
