"""Two-sided tails in the daemon (issue 13, item 1; docs/statistics.md "Two tails").

A real saliencyd with `[pot] tails = "both"` calibrates on i.i.d. rows; then a few filters are
made exactly 0 (dead) or 1000x smaller (quiet): lower-direction alerts fire for exactly those
filters, and `top` / `filter` say "lower". On i.i.d. rows alone, no alert fires.
"""
import json
import subprocess

import numpy as np

from conftest import ctl_bin, wait_for

LAYERS = [("conv1", 16), ("conv2", 24)]
K = 40
CAL = 1000


def start(saliencyd, tails="both", metrics=False):
    return saliencyd(calibration=CAL, metrics=metrics, config_sections={"pot": {"tails": tails, "q": 1e-3, "level": 0.95}})


def layer_extremes(d, layer, direction):
    """The value of saliencyd_layer_extreme_exceedances_total for one layer and direction (or None)."""
    want = f'saliencyd_layer_extreme_exceedances_total{{model="twosided",layer="{layer}",direction="{direction}"}}'
    for line in d.metrics_text().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return None


def iid_rows(rng, n):
    scales = 0.5 + (np.arange(K) % 5) * 0.3
    return (rng.lognormal(0.0, 0.5, size=(n, K)) * scales).astype(np.float32)


def feed(d, prod, rows):
    # PUB drops what it sends before the daemon's SUB has joined (slow joiner): wait for it first.
    assert prod.wait_for_subscriber(20), "the daemon did not subscribe to the feed"
    before = (d.model("twosided") or {}).get("rows", 0)
    for r in rows:
        prod.publish(r.tobytes())
    d.wait_rows("twosided", before + len(rows), timeout=120)


def all_alerts(d):
    return d.query({"op": "alerts", "since": 0})["alerts"]


def test_lower_alerts_fire_for_dead_and_quiet_filters_only(saliencyd):
    d = start(saliencyd, metrics=True)
    rng = np.random.default_rng(7)
    prod = d.producer("twosided", LAYERS)
    feed(d, prod, iid_rows(rng, CAL))
    assert d.model("twosided")["phase"] == "monitoring"
    feed(d, prod, iid_rows(rng, 500))
    assert all_alerts(d) == [], "i.i.d. rows raised alerts"

    dead, quiet = [3, 22], [9, 30]
    rows = iid_rows(rng, 300)
    rows[:, dead] = 0.0
    rows[:, quiet] *= 1e-3
    feed(d, prod, rows)
    # (ModelShift fires too: four dead/quiet filters make every row a hit of the model-level rule.)
    alerts = wait_for(lambda: [a for a in all_alerts(d) if a["status"] == "firing" and a["labels"]["alertname"] == "SalientFilter"] or None,
                      10, what="firing filter alerts")
    fired = {(a["filter"], a["labels"]["direction"]) for a in alerts}
    assert fired == {(f, "lower") for f in dead + quiet}, fired
    for a in alerts:
        assert a["labels"]["alertname"] == "SalientFilter"
        assert a["annotations"]["direction"] == "lower"
        assert "lower tail" in a["annotations"]["summary"]
        assert a["value"] < a["threshold"]

    top = d.query({"op": "top", "model": "twosided", "k": 4})
    assert {e["filter"] for e in top["top"]} == set(dead + quiet), top
    assert all(e["direction"] == "lower" for e in top["top"]), top

    f = d.query({"op": "filter", "model": "twosided", "filter": dead[0]})
    assert f["lower"]["firing"] is True and f["firing"] is False
    assert f["lower"]["zeros"] >= 300 and f["lower"]["zero_mode"] == "extreme"
    assert f["recent"][0]["direction"] == "lower"
    g = d.query({"op": "filter", "model": "twosided", "filter": 1})
    assert g["lower"]["firing"] is False and g["lower"]["extremes"] < 10

    # saliencyctl top and filter show the direction.
    ctl = str(ctl_bin())
    out = subprocess.run([ctl, "top", "--model", "twosided", "--k", "4", "--query", d.endpoints["query"]],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert "direction" in out and out.count("lower") >= 4, out
    out = subprocess.run([ctl, "filter", "--model", "twosided", str(dead[0]), "--query", d.endpoints["query"]],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert "lower tail:" in out and "FIRING" in out and "mode extreme" in out, out

    # The per-layer extreme counters say which direction (pushed every 5 s): 300 dead rows of
    # filter 3 (conv1) and 22 (conv2) at least, all lower; the upper series exist and stay low.
    wait_for(lambda: (layer_extremes(d, "conv1", "lower") or 0) >= 300 and (layer_extremes(d, "conv2", "lower") or 0) >= 300,
             15, what="lower-direction layer counters")
    assert layer_extremes(d, "conv1", "upper") is not None and layer_extremes(d, "conv1", "upper") < 20

    # An exploding filter is an upper-direction alert in the same model.
    rows = iid_rows(rng, 100)
    rows[:, dead] = 0.0
    rows[:, quiet] *= 1e-3
    rows[:, 15] *= 1e4
    feed(d, prod, rows)
    up = wait_for(lambda: [a for a in all_alerts(d) if a.get("filter") == 15 and a["status"] == "firing"] or None, 10, what="upper alert")
    assert up[0]["labels"]["direction"] == "upper"
    assert d.stop(timeout=30) == 0


def test_iid_rows_raise_no_alert_in_either_direction(saliencyd):
    d = start(saliencyd)
    rng = np.random.default_rng(11)
    prod = d.producer("twosided", LAYERS)
    feed(d, prod, iid_rows(rng, CAL + 3000))
    assert all_alerts(d) == []
    st = d.model("twosided")
    assert st["phase"] == "monitoring" and st["firing"] == 0


def test_upper_only_alerts_say_upper(saliencyd):
    d = start(saliencyd, tails="upper")
    rng = np.random.default_rng(5)
    prod = d.producer("twosided", LAYERS)
    feed(d, prod, iid_rows(rng, CAL))
    rows = iid_rows(rng, 200)
    rows[:, 3] = 0.0        # dead: not watched with tails = "upper"
    rows[:, 15] *= 1e4
    feed(d, prod, rows)
    # (ModelShift may fire too: filter 15 makes every row a hit of the model-level rule, armed from the first row.)
    alerts = wait_for(lambda: [a for a in all_alerts(d) if a["status"] == "firing" and a["labels"]["alertname"] == "SalientFilter"] or None,
                      10, what="firing filter alerts")
    assert {(a["filter"], a["labels"]["direction"]) for a in alerts} == {(15, "upper")}
    f = d.query({"op": "filter", "model": "twosided", "filter": 3})
    assert "lower" not in f


def test_analyze_ranks_dead_filters_in_the_lower_direction(tmp_path):
    rng = np.random.default_rng(3)
    ref = iid_rows(rng, 800)
    x = iid_rows(rng, 3)
    x[:, 6] = 0.0
    x[:, 25] *= 1e-3
    np.save(tmp_path / "ref.npy", ref)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "schema.json").write_text(json.dumps({"model": "twosided", "layers": [{"name": n, "filters": f} for n, f in LAYERS]}))
    args = [str(ctl_bin()), "analyze", "--schema", str(tmp_path / "schema.json"), "--reference", str(tmp_path / "ref.npy"),
            "--input", str(tmp_path / "x.npy"), "--top", "2", "--q", "1e-3", "--json"]
    rows = [json.loads(l) for l in subprocess.run(args + ["--tails", "both"], capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()]
    assert len(rows) == 3
    for r in rows:
        assert {(e["filter"], e["direction"]) for e in r["top"]} == {(6, "lower"), (25, "lower")}, r
    table = subprocess.run(args[:-1] + ["--tails", "both"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "direction" in table.splitlines()[0] and "lower" in table
    upper = [json.loads(l) for l in subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()]
    assert all("direction" not in e and e["filter"] not in (6, 25) for r in upper for e in r["top"])
