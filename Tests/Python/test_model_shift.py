"""The model-level shift alert without a burn-in (issue 13, item 3; docs/alerting.md §4).

A real saliencyd calibrates on i.i.d. rows; its model-level rule gets its null sample by
cross-fitting on those calibration rows (log: "model-level shift rule calibrated" with
source=cross_fit), so the CUSUM runs from the first monitored row. On further i.i.d. rows no
ModelShift alert fires; when many filters rise a little (x1.6 on half of them, each one alone far
from its extreme threshold) the ModelShift alert fires within a bounded number of rows after onset,
where the former design (10,000 burn-in rows after calibration) could not fire at all.
"""
import re
import subprocess

import numpy as np

from conftest import ctl_bin, run_saliencyd, toml_text, wait_for

LAYERS = [("conv1", 32), ("conv2", 48)]
K = 80
CAL = 1000
MODEL = "shift"


def iid_rows(rng, n):
    scales = 0.5 + (np.arange(K) % 7) * 0.25
    return (rng.lognormal(0.0, 0.5, size=(n, K)) * scales).astype(np.float32)


def feed(d, prod, rows):
    assert prod.wait_for_subscriber(20), "the daemon did not subscribe to the feed"   # slow joiner
    before = (d.model(MODEL) or {}).get("rows", 0)
    for r in rows:
        prod.publish(r.tobytes())
    d.wait_rows(MODEL, before + len(rows), timeout=120)


def model_alerts(d, active=False):
    req = {"op": "alerts", "active": True} if active else {"op": "alerts", "since": 0}
    return [a for a in d.query(req)["alerts"] if a["labels"]["alertname"] == "ModelShift"]


def test_model_shift_fires_soon_after_onset_without_burn_in(saliencyd):
    d = saliencyd(calibration=CAL, config_sections={"pot": {"q": 1e-3}})
    rng = np.random.default_rng(13)
    prod = d.producer(MODEL, LAYERS)
    feed(d, prod, iid_rows(rng, CAL // 2))
    assert d.model(MODEL)["model_rule"] == {"state": "waiting", "source": "cross_fit"}, d.model(MODEL)
    feed(d, prod, iid_rows(rng, CAL - CAL // 2))
    assert d.model(MODEL)["phase"] == "monitoring"
    line = wait_for(lambda: next((l for l in d.log_text().splitlines() if "model-level shift rule calibrated" in l), None), 10,
                    what="the model-level rule calibrated at calibration end")
    assert "source=cross_fit" in line and "null_rows=1000" in line, line
    null_rate = float(re.search(r"null_rate=([0-9.e-]+)", line).group(1))
    assert 0 < null_rate < 0.5, line
    # status says the same as the log line
    rule = d.model(MODEL)["model_rule"]
    assert rule["state"] == "armed" and rule["source"] == "cross_fit" and rule["null_rows"] == 1000, rule
    assert abs(rule["null_rate"] - null_rate) <= 1e-6 * null_rate and rule["row_threshold"] >= 1, (rule, line)

    # Clean rows: no model-level alert (nor any other).
    feed(d, prod, iid_rows(rng, 3000))
    assert model_alerts(d) == [], "i.i.d. rows raised a ModelShift alert"

    # Onset: half of the filters x1.6. Fed in steps of 5 rows; the delay counts rows after onset.
    fed = 0
    while fed < 400 and not model_alerts(d, active=True):
        rows = iid_rows(rng, 5)
        rows[:, ::2] *= 1.6
        feed(d, prod, rows)
        fed += 5
    assert model_alerts(d, active=True), f"no ModelShift alert within {fed} shifted rows"
    print(f"ModelShift fired within {fed} rows after onset (null rate bound {null_rate})")
    assert fed <= 300


def test_burn_in_remains_a_choice_and_bad_values_are_refused(saliencyd, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_text({"alerting": {"model_null_sample": "holdout"}}))
    r = run_saliencyd("--check-config", "--config", str(cfg))
    assert r.returncode == 2 and "model_null_sample" in r.stdout + r.stderr, r.stdout + r.stderr
    # Half of a 100-row calibration at level 0.9 has 5 expected peaks < min_peaks 10: a warning that
    # the model-level rule falls back to the burn-in, with the fix named (not fatal).
    cfg.write_text(toml_text({"pot": {"calibration": 100}}))
    r = run_saliencyd("--check-config", "--config", str(cfg))
    assert r.returncode == 0 and "falls back to a burn-in" in r.stdout, r.stdout + r.stderr
    cfg.write_text(toml_text({"alerting": {"model_null_sample": "burn_in"}}))
    r = run_saliencyd("--check-config", "--config", str(cfg))
    assert r.returncode == 0 and 'model_null_sample = "burn_in"' in r.stdout, r.stdout + r.stderr

    # Burn-in: no calibration of the model-level rule at calibration end, and no alert on the shift.
    d = saliencyd(calibration=CAL, config_sections={"pot": {"q": 1e-3}, "alerting": {"model_null_sample": "burn_in", "model_burn_in": 5000}})
    rng = np.random.default_rng(14)
    prod = d.producer(MODEL, LAYERS)
    feed(d, prod, iid_rows(rng, CAL + 200))
    rows = iid_rows(rng, 300)
    rows[:, ::2] *= 1.6
    feed(d, prod, rows)
    assert "model-level shift rule calibrated" not in d.log_text()
    assert model_alerts(d) == []
    assert d.model(MODEL)["model_rule"] == {"state": "burning_in", "source": "burn_in", "burn_in_seen": 500,
                                            "burn_in_total": 5000}, d.model(MODEL)
    out = subprocess.run([str(ctl_bin()), "status", "--query", d.endpoints["query"]], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "burning in 500/5000" in out.stdout, out.stdout + out.stderr


def test_too_short_calibration_falls_back_to_burn_in(saliencyd):
    # calibration 100: the folds (50 rows) cannot calibrate; the daemon says so and burns in.
    d = saliencyd(calibration=100, config_sections={"pot": {"q": 1e-3}, "alerting": {"model_burn_in": 200}})
    rng = np.random.default_rng(15)
    prod = d.producer(MODEL, LAYERS)
    feed(d, prod, iid_rows(rng, 100))
    wait_for(lambda: "could not cross-fit its null sample" in d.log_text(), 10, what="the cross-fit failure logged")
    assert "model-level shift rule calibrated" not in d.log_text()
    feed(d, prod, iid_rows(rng, 200))
    line = wait_for(lambda: next((l for l in d.log_text().splitlines() if "model-level shift rule calibrated" in l), None), 10,
                    what="the burn-in's calibration")
    assert "source=burn_in" in line and "null_rows=200" in line, line
