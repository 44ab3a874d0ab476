"""saliencyd and Prometheus, for real (issue 11): a live daemon's /metrics passes `promtool check
metrics`; every family has HELP and TYPE; counters exist at 0 before their first event; process_*
metrics are sane; the row-latency histogram has µs buckets; the real Debian `prometheus` scrapes
the daemon, loads deploy/prometheus/saliencyd.rules.yml (groups healthy) and answers every
expression of deploy/grafana/saliencyd-dashboard.json; `promtool check/test rules` and
`check config` pass on the deploy files; docs/operations.md lists exactly the exported families.

Missing tools (promtool, prometheus) are failures, not skips: CI installs them (scripts/test.sh).
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

from conftest import ROOT, free_port, pack_header, wait_for

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "saliencyd.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "saliencyd.rules.test.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "saliencyd-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# Dashboard expressions allowed to be empty on this feed (no successful Alertmanager POST here).
MAY_BE_EMPTY = {"time() - (saliencyd_alertmanager_last_success_timestamp_seconds > 0)"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: install the Debian package "
                    f"{'prometheus' if name in ('prometheus', 'promtool') else name} (scripts/test.sh does)")
    return path


def run(args: List[str], timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


# ---------------------------------------------------------------------------------------------
# Exposition parsing

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Tuple[Dict[str, str], Dict[str, str], List[Tuple[str, Dict[str, str], float]]]:
    """(help by family, type by family, samples as (name, labels, value))."""
    helps, types, samples = {}, {}, []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, h = line[7:].partition(" ")
            helps[name] = h
        elif line.startswith("# TYPE "):
            name, _, t = line[7:].partition(" ")
            types[name] = t
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m, f"unparsable exposition line: {line!r}"
            samples.append((m.group(1), dict(LABEL.findall(m.group(3) or "")), float(m.group(4))))
    return helps, types, samples


def family_of(sample: str, types: Dict[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and types.get(sample[: -len(suffix)]) == "histogram":
            return sample[: -len(suffix)]
    return sample


def value(samples, name: str, **labels) -> List[float]:
    return [v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items())]


def promtool_lint(text: str) -> subprocess.CompletedProcess:
    return run([tool("promtool"), "check", "metrics"], input=text)


def histogram_quantile(q: float, buckets: List[Tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets (linear interpolation)."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return buckets[-2][0]


# ---------------------------------------------------------------------------------------------
# Deploy files alone

def test_rules_config_and_rule_unit_tests():
    promtool = tool("promtool")
    r = run([promtool, "check", "rules", str(RULES)])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([promtool, "test", "rules", str(RULE_TESTS)], cwd=str(RULE_TESTS.parent))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = run([promtool, "check", "config", str(PROM_CONFIG)])
    assert r.returncode == 0, r.stdout + r.stderr
    # Every alerting rule has a unit test that expects it to fire and one that expects silence.
    rules = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M))
    tests = RULE_TESTS.read_text()
    for name in rules:
        blocks = re.findall(rf"alertname: {name}\n\s*exp_alerts:(.*?)(?=\n\s*- eval_time|\n\s*- name|\Z)", tests, re.S)
        assert any(b.strip().startswith("[]") for b in blocks), f"{name}: no unit test expects it silent"
        assert any("exp_labels" in b for b in blocks), f"{name}: no unit test expects it to fire"


def test_rule_unit_tests_can_fail(tmp_path):
    """The unit tests check thresholds: a rule made never to fire fails them."""
    broken = RULES.read_text().replace("> 0.01", "> 0.5")
    assert broken != RULES.read_text()
    (tmp_path / "saliencyd.rules.yml").write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / "saliencyd.rules.test.yml")
    r = run([tool("promtool"), "test", "rules", "saliencyd.rules.test.yml"], cwd=str(tmp_path))
    assert r.returncode != 0 and "SaliencydSequenceGaps" in (r.stdout + r.stderr)


def documented_families() -> List[str]:
    text = OPERATIONS.read_text()
    start = text.index("\n## Prometheus")
    end = text.find("\n## ", start + 5)
    section = text[start: end if end > 0 else len(text)]
    return re.findall(r"^\| `([a-z_:]+)` \|", section, re.M)


# ---------------------------------------------------------------------------------------------
# A live daemon and a live Prometheus

def dashboard_expressions() -> List[str]:
    d = json.loads(DASHBOARD.read_text())
    assert 36 <= d["schemaVersion"] <= 41
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "model"} <= names
    exprs = []
    def walk(panels):
        for p in panels:
            assert p.get("type") == "row" or p["datasource"]["uid"] == "${datasource}", p["title"]
            for t in p.get("targets", []):
                exprs.append(t["expr"])
            walk(p.get("panels", []))
    walk(d["panels"])
    return exprs


def substitute(expr: str, model: str) -> str:
    return (expr.replace("$__rate_interval", "30s").replace("${model}", model).replace("$model", model))


def prom_query(port: int, expr: str) -> Dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_live_metrics_and_prometheus(saliencyd, tmp_path):
    promtool, prometheus = tool("promtool"), tool("prometheus")
    am_port = free_port()   # nothing listens: delivery fails, which the delivery series must show
    launched = time.time()
    d = saliencyd(metrics=True, calibration=300, snapshot_interval=1,
                  config_sections={"alertmanager": {"urls": f'@raw:["http://127.0.0.1:{am_port}"]'}})

    # -- before any event: lint-clean, HELP and TYPE everywhere, counters at 0 ------------------
    body = d.metrics_text()
    r = promtool_lint(body)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    helps, types, samples = parse(body)
    for n, _, _ in samples:
        fam = family_of(n, types)
        assert fam in types and helps.get(fam), f"{n}: no # TYPE / # HELP"
    reasons = {l["reason"] for n, l, v in samples if n == "saliencyd_rejected_total"}
    assert len(reasons) == 14 and all(v == 0 for v in value(samples, "saliencyd_rejected_total"))
    assert value(samples, "saliencyd_queries_total") == [1.0]          # the fixture's readiness `status`
    for c in ("saliencyd_snapshot_failures_total", "saliencyd_alert_log_failures_total",
              "saliencyd_models_expired_total", "saliencyd_log_lines_suppressed_total", "saliencyd_alertmanager_alerts_dropped_total"):
        assert value(samples, c) == [0.0], c
    url = f"http://127.0.0.1:{am_port}"
    for c in ("saliencyd_alertmanager_alerts_sent_total", "saliencyd_alertmanager_alerts_failed_total",
              "saliencyd_alertmanager_requests_failed_total"):
        assert value(samples, c, url=url) == [0.0], c

    # -- process_* -----------------------------------------------------------------------------
    assert abs(value(samples, "process_start_time_seconds")[0] - launched) < 10
    rss = value(samples, "process_resident_memory_bytes")[0]
    assert 0.5 < rss / d.rss_bytes() < 2.0
    assert value(samples, "process_virtual_memory_bytes")[0] >= rss
    fds = value(samples, "process_open_fds")[0]
    assert 3 <= fds <= value(samples, "process_max_fds")[0]
    assert 0 < value(samples, "process_cpu_seconds_total")[0] < 60

    # -- a model is admitted: its series exist at 0 before its first row -------------------------
    layers = [("conv1", 8), ("conv2", 24)]
    p = d.producer("prom", layers)
    assert p.wait_for_subscriber(10.0)
    p.send_schema()
    d.wait_model("prom")
    _, _, samples = parse(d.metrics_text())
    for c in ("saliencyd_predictions_total", "saliencyd_sequence_gaps_total", "saliencyd_extreme_exceedances_total",
              "saliencyd_peaks_total", "saliencyd_refits_total", "saliencyd_calibrated_ratio",
              "saliencyd_firing_alerts", "saliencyd_model_shift_firing"):
        assert value(samples, c, model="prom") == [0.0], c
    assert sorted(value(samples, "saliencyd_alerts_total", model="prom")) == [0.0, 0.0]
    for layer in ("conv1", "conv2"):
        assert value(samples, "saliencyd_layer_extreme_exceedances_total", model="prom", layer=layer) == [0.0]
        assert value(samples, "saliencyd_layer_firing_alerts", model="prom", layer=layer) == [0.0]

    # -- a little feed: calibration, monitoring rows, a gap, a rejected row ----------------------
    rng = np.random.default_rng(11)
    K = sum(f for _, f in layers)
    for i in range(2000):
        if i == 1000:
            p.sequence += 5                                 # 5 rows lost upstream
        p.publish(np.exp(rng.standard_normal(K)).astype(np.float32))
        time.sleep(0.001)                                   # a model's inference pace: refits run between rows
    p.send([b"pred.prom", pack_header(p.fingerprint, p.producer_id, p.sequence), b"\0" * 8])   # wrong width
    p.sequence += 1
    d.wait_rows("prom", 2000)
    # Periodic series (top scores, per layer) are pushed every 5 s.
    body = wait_for(lambda: (lambda t: t if 'rank="10"' in t else None)(d.metrics_text()), 15, what="top scores")

    r = promtool_lint(body)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    helps, types, samples = parse(body)
    for n, _, _ in samples:
        fam = family_of(n, types)
        assert fam in types and helps.get(fam), f"{n}: no # TYPE / # HELP"
    assert "filter=" not in body
    assert value(samples, "saliencyd_predictions_total", model="prom") == [2000.0]
    assert value(samples, "saliencyd_sequence_gaps_total", model="prom") == [5.0]
    assert value(samples, "saliencyd_rejected_total", reason="wrong_width") == [1.0]
    assert value(samples, "saliencyd_calibrated_ratio", model="prom") == [1.0]
    assert value(samples, "saliencyd_last_snapshot_timestamp_seconds")[0] > launched
    assert value(samples, "saliencyd_snapshot_interval_seconds") == [1.0]

    # -- row latency histogram: sub-µs..100 ms buckets, p99 below 1 ms on this feed ---------------
    buckets = [(float(l["le"]), v) for n, l, v in samples if n == "saliencyd_row_processing_seconds_bucket"]
    les = sorted(le for le, _ in buckets if not math.isinf(le))
    assert les[0] <= 1e-6 and les[-1] >= 0.1 and len(les) <= 20, les
    count = value(samples, "saliencyd_row_processing_seconds_count")[0]
    assert count == 2000, count                                   # every scored row is timed
    p99 = histogram_quantile(0.99, buckets)
    print(f"row latency from the histogram: p50 {histogram_quantile(0.5, buckets) * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us")
    assert p99 < 1e-3, p99

    # -- the documentation lists exactly the exported families -------------------------------------
    exported = set(types)
    documented = set(documented_families())
    assert exported == documented, f"undocumented: {sorted(exported - documented)}; documented but not exported: {sorted(documented - exported)}"

    # -- a shift in conv1: filter alerts fire, show per layer, and their latency is recorded ---------
    for i in range(60):
        row = np.exp(rng.standard_normal(K)).astype(np.float32)
        row[:4] *= 1000                                     # conv1's first 4 filters
        p.publish(row)
        time.sleep(0.001)
    d.wait_rows("prom", 2060)

    def conv1_firing():
        _, _, s = parse(d.metrics_text())
        v = value(s, "saliencyd_layer_firing_alerts", model="prom", layer="conv1")
        return s if v and v[0] >= 1 else None
    samples = wait_for(conv1_firing, 15, interval=0.5, what="firing alerts in layer conv1 (pushed every 5 s)")
    per_layer = {l["layer"]: v for n, l, v in samples if n == "saliencyd_layer_firing_alerts" and l["model"] == "prom"}
    firing = value(samples, "saliencyd_firing_alerts", model="prom")[0]
    assert set(per_layer) == {"conv1", "conv2"} and sum(per_layer.values()) == firing >= 1, (per_layer, firing)
    assert value(samples, "saliencyd_alerts_total", model="prom", status="firing")[0] >= firing
    assert value(samples, "saliencyd_alert_latency_seconds_count")[0] >= 1
    # The model-level alert fires too: its null is cross-fitted on the calibration rows, no burn-in.
    assert value(samples, "saliencyd_model_shift_firing", model="prom") == [1.0]
    # The forwarder tried to deliver them to the dead Alertmanager: read at scrape time from DeliveryStats.
    def delivery_failed():
        _, _, s = parse(d.metrics_text())
        f = value(s, "saliencyd_alertmanager_requests_failed_total", url=url)
        return s if f and f[0] >= 1 else None
    samples = wait_for(delivery_failed, 20, interval=0.5, what="failed POSTs to the dead Alertmanager in /metrics")
    assert value(samples, "saliencyd_alertmanager_up", url=url) == [0.0]
    assert value(samples, "saliencyd_alertmanager_alerts_failed_total", url=url)[0] >= 1
    assert value(samples, "saliencyd_alertmanager_alerts_sent_total", url=url) == [0.0]
    assert value(samples, "saliencyd_alertmanager_last_success_timestamp_seconds", url=url) == [0.0]
    assert value(samples, "saliencyd_alertmanager_queue_capacity")[0] > 0

    # -- the real Prometheus scrapes it, loads the rules, answers every dashboard expression -------
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: saliencyd\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{d.metrics_port}']\n")
    r = run([promtool, "check", "config", str(cfg)])
    assert r.returncode == 0, r.stdout + r.stderr
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready():
            assert prom.poll() is None, f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}"
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).status == 200
            except OSError:
                return False
        wait_for(ready, 30, interval=0.2, what="prometheus ready")

        def scraped():
            res = prom_query(port, 'count_over_time(up{job="saliencyd"}[1m])')["data"]["result"]
            return res and float(res[0]["value"][1]) >= 5 and prom_query(port, "saliencyd_top_score")["data"]["result"]
        wait_for(scraped, 40, interval=0.5, what="5 scrapes of saliencyd by prometheus")
        up = prom_query(port, 'up{job="saliencyd"}')["data"]["result"]
        assert up and up[0]["value"][1] == "1"

        exprs = dashboard_expressions()
        assert len(exprs) >= 20
        empty = []
        for e in exprs:
            for model in (".*", "prom"):
                q = substitute(e, model)
                assert "$" not in q, q
                res = prom_query(port, q)
                assert res["status"] == "success", (q, res)
                if not res["data"]["result"] and e not in MAY_BE_EMPTY:
                    empty.append(q)
        assert not empty, f"dashboard expressions without data: {empty}"
        # The same p99 through Prometheus (rate over the scrapes during the feed may be 0 → NaN).
        q = prom_query(port, "histogram_quantile(0.99, sum by (le) (increase(saliencyd_row_processing_seconds_bucket[5m])))")
        v = float(q["data"]["result"][0]["value"][1])
        assert math.isnan(v) or v < 1e-3, v

        # Rule groups loaded and healthy.
        def rules_evaluated():
            groups = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).read())["data"]["groups"]
            return groups if groups and all(r.get("lastEvaluation", "").startswith("20") for g in groups for r in g["rules"]) else None
        groups = wait_for(rules_evaluated, 20, interval=0.5, what="rules evaluated")
        assert [g["name"] for g in groups] == ["saliencyd"]
        rules = groups[0]["rules"]
        assert len(rules) == len(re.findall(r"^\s*- alert: ", RULES.read_text(), re.M)) == 10
        bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
        assert not bad, bad
        # Delivery to the dead Alertmanager is visible: up 0 for that URL.
        res = prom_query(port, f'saliencyd_alertmanager_up{{url="{url}"}}')["data"]["result"]
        assert res and res[0]["value"][1] == "0"
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(timeout=10)
        log.close()
    assert d.alive()
