"""Per-model [pot] settings (`[models.NAME]`; docs/operations.md "Per-model settings").

One real saliencyd runs two models of the same layout: `net` on the daemon-wide `[pot] tails = "upper"`
and `net-both` with `[models.net-both] tails = "both"`. After calibration the same two filters go dead
in both feeds: lower-direction alerts fire only in `net-both`. `status` (JSON and `saliencyctl status`)
shows each model's effective tails/transform; a reload that changes a model table is refused as
restart-only; a restart with the table changed refuses that model's snapshot state alone (it
recalibrates, the other model keeps its state); `--check-config` prints the per-model settings and
rejects bad tables.
"""
import json
import subprocess

import numpy as np

from conftest import ctl_bin, run_saliencyd, toml_text, wait_for

LAYERS = [("conv1", 16), ("conv2", 24)]
K = 40
CAL = 1000
DEAD = [3, 22]
POT = {"tails": "upper", "q": 1e-3, "level": 0.95}


def sections(**models):
    s = {"pot": dict(POT)}
    for name, keys in models.items():
        s[f"models.{name.replace('_', '-')}"] = keys
    return s


def iid_rows(rng, n):
    scales = 0.5 + (np.arange(K) % 5) * 0.3
    return (rng.lognormal(0.0, 0.5, size=(n, K)) * scales).astype(np.float32)


def feed(d, prods, rows):
    """The same rows to every model's producer; waits until the daemon has taken them all."""
    before = {m: (d.model(m) or {}).get("rows", 0) for m in prods}
    for r in rows:
        for p in prods.values():
            p.publish(r.tobytes())
    for m in prods:
        d.wait_rows(m, before[m] + len(rows), timeout=120)


def filter_alerts(d, model):
    return [a for a in d.query({"op": "alerts", "since": 0})["alerts"]
            if a["model"] == model and a["labels"].get("alertname") == "SalientFilter"]


def ctl(*args):
    return subprocess.run([str(ctl_bin()), *args], capture_output=True, text=True, timeout=30)


def producers(d):
    prods = {m: d.producer(m, LAYERS) for m in ("net", "net-both")}
    for p in prods.values():
        assert p.wait_for_subscriber(20), "the daemon did not subscribe to the feed"
    return prods


def test_a_dead_filter_alerts_only_in_the_model_watching_both_tails(saliencyd):
    d = saliencyd(calibration=CAL, config_sections=sections(net_both={"tails": "both"}))
    rng = np.random.default_rng(21)
    prods = producers(d)
    feed(d, prods, iid_rows(rng, CAL + 200))
    for m in prods:
        assert d.model(m)["phase"] == "monitoring", d.model(m)
    assert filter_alerts(d, "net") == [] and filter_alerts(d, "net-both") == [], "i.i.d. rows raised filter alerts"

    # Status: each model's effective settings (JSON and the saliencyctl table).
    st = {m: d.model(m) for m in prods}
    assert (st["net"]["tails"], st["net"]["transform"]) == ("upper", "none"), st["net"]
    assert (st["net-both"]["tails"], st["net-both"]["transform"]) == ("both", "none"), st["net-both"]
    table = ctl("status", "--query", d.endpoints["query"])
    assert table.returncode == 0, table.stderr
    lines = {l.split()[0]: l.split() for l in table.stdout.splitlines() if l.split() and l.split()[0] in prods}
    assert "tails" in table.stdout and lines["net"][2:4] == ["upper", "none"] and lines["net-both"][2:4] == ["both", "none"], table.stdout
    # The registration line says which settings each model got.
    reg = {m: [l for l in d.log_lines() if "model registered" in l and f"model={m} " in l + " "] for m in prods}
    assert reg["net-both"] and "tails=both" in reg["net-both"][0] and "[models.net-both] over [pot]" in reg["net-both"][0], reg
    assert reg["net"] and "tails=upper" in reg["net"][0] and "settings=[pot]" in reg["net"][0], reg

    # The same two filters die in both feeds.
    rows = iid_rows(rng, 300)
    rows[:, DEAD] = 0.0
    feed(d, prods, rows)
    fired = wait_for(lambda: [a for a in filter_alerts(d, "net-both") if a["status"] == "firing"] or None, 10, what="lower alerts in net-both")
    wait_for(lambda: len({a["filter"] for a in filter_alerts(d, "net-both") if a["status"] == "firing"}) == len(DEAD), 10, what="both dead filters")
    fired = [a for a in filter_alerts(d, "net-both") if a["status"] == "firing"]
    assert {(a["filter"], a["labels"]["direction"]) for a in fired} == {(f, "lower") for f in DEAD}, fired
    # net watches the upper tail only: the dead filters are no alert there (its rows were scored:
    # the same number reached both models).
    assert d.model("net")["rows"] == d.model("net-both")["rows"]
    assert filter_alerts(d, "net") == [], filter_alerts(d, "net")
    f = d.query({"op": "filter", "model": "net", "filter": DEAD[0]})
    assert "lower" not in f, f
    g = d.query({"op": "filter", "model": "net-both", "filter": DEAD[0]})
    assert g["lower"]["firing"] is True, g

    # A reload that changes a model table needs a restart: refused, nothing half-applied.
    d.write_config(toml_text(sections(net_both={"tails": "lower"})))
    d.sighup()
    refused = wait_for(lambda: [l for l in d.log_lines() if "configuration reload refused" in l] or None, 10, what="the refused reload")
    assert "models.net-both" in refused[0], refused[0]
    assert d.model("net-both")["tails"] == "both"
    # A reload with a bad table is not applied at all.
    d.write_config(toml_text(sections(net_both={"tails": "sideways"})))
    d.sighup()
    failed = wait_for(lambda: [l for l in d.log_lines() if "configuration reload failed" in l] or None, 10, what="the failed reload")
    assert "models.net-both.tails" in failed[0], failed[0]
    assert d.model("net-both")["tails"] == "both" and d.model("net")["tails"] == "upper"
    assert d.stop(timeout=30) == 0


def test_a_changed_model_table_refuses_that_models_snapshot_only(saliencyd):
    d = saliencyd(calibration=CAL, config_sections=sections(net_both={"tails": "both"}))
    rng = np.random.default_rng(8)
    prods = producers(d)
    feed(d, prods, iid_rows(rng, CAL + 20))
    assert d.stop(timeout=30) == 0
    snap = d.state_dir / "snapshot.bin"
    r = ctl("state", "inspect", str(snap), "--json")
    assert r.returncode == 0, r.stderr
    learned = {m["model"]: m["watched_tails"] for m in json.loads(r.stdout)["models"]}
    assert learned == {"net": "upper", "net-both": "both"}, learned
    # `state inspect --config` checks each model against its own settings: the current file loads...
    r = ctl("state", "inspect", str(snap), "--config", str(d.config_path))
    assert r.returncode == 0, r.stdout + r.stderr

    # ... and with net-both's table gone (its settings are now [pot]'s: upper), it names that model.
    d.write_config(toml_text(sections()))
    r = ctl("state", "inspect", str(snap), "--config", str(d.config_path))
    assert r.returncode != 0 and "net-both" in r.stdout + r.stderr and "tails = both" in r.stdout + r.stderr, r.stdout + r.stderr
    d.start()
    st = d.status()
    models = {m["model"]: m for m in st["models"]}
    assert set(models) == {"net"}, models
    assert models["net"]["phase"] == "monitoring" and models["net"]["rows"] == CAL + 20, models["net"]
    lines = [l for l in d.log_lines() if "snapshot refused for one model" in l]
    assert len(lines) == 1 and "model=net-both" in lines[0] and "tails = both" in lines[0] and "tails = upper" in lines[0], d.log_tail()
    assert "settings=[pot]" in lines[0], lines[0]
    copies = list(d.state_dir.glob("snapshot.bin.refused-*"))
    assert len(copies) == 1 and not list(d.state_dir.glob("*.rejected-*")), list(d.state_dir.iterdir())
    # The copy still holds both models' state (to go back: old settings + the copy as snapshot.bin).
    r = ctl("state", "inspect", str(copies[0]), "--json")
    assert {m["model"] for m in json.loads(r.stdout)["models"]} == {"net", "net-both"}, r.stdout

    # net-both recalibrates from zero under its new settings; net goes on where it was.
    for p in prods.values():
        p.close()
    prods = producers(d)
    feed(d, prods, iid_rows(rng, 5))
    nb = d.model("net-both")
    assert nb["phase"] == "calibrating" and nb["rows"] == 5 and nb["tails"] == "upper", nb
    assert d.model("net")["rows"] == CAL + 25 and d.model("net")["phase"] == "monitoring"
    assert d.stop(timeout=30) == 0


def test_check_config_prints_and_checks_model_tables(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(toml_text({"pot": POT, "models.net-both": {"tails": "both", "transform": "layer-logres"},
                               'models."net:taylor"': {"q": 1e-4, "calibration": 2000}}))
    r = run_saliencyd("--check-config", "--config", str(good))
    assert r.returncode == 0, r.stderr
    assert "[models.net-both]  tails = both  transform = layer-logres  q = 0.001  calibration = 1000" in r.stdout, r.stdout
    assert '[models."net:taylor"]  tails = upper  transform = none  q = 0.0001  calibration = 2000' in r.stdout, r.stdout
    assert "configuration OK" in r.stdout
    for body, needle in [
        ('[models.net]\ntails = "sideways"\n', 'models.net.tails must be "upper", "lower" or "both"'),
        ('[models.net]\nlevel = 0.99\n', "unknown key models.net.level"),
        ('[models."a b"]\ntails = "both"\n', "is not a model name"),
        ('[models.net]\nq = 0.2\n', "[models.net] (over [pot]): q must be in (0, 1 - level)"),
        ('[models.net.x]\ntails = "both"\n', "at most two deep"),
        ("".join(f'[models.m{i}]\ntails = "both"\n' for i in range(1025)), "1025 [models.NAME] tables; at most 1024"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(body)
        r = run_saliencyd("--check-config", "--config", str(bad))
        assert r.returncode == 2 and needle in r.stderr, (body[:80], r.returncode, r.stderr[:500])
