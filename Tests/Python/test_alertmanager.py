"""saliencyd → a real Prometheus Alertmanager (Debian prometheus-alertmanager on loopback).

The daemon is configured with `[alertmanager] urls` pointing at an Alertmanager started here on
free ports (gossip off, storage in tmp, deploy/alertmanager/alertmanager.yml). A small model is
calibrated, then shifted so that filter alerts and the model-level alert fire; the test reads
Alertmanager's API and checks the alerts arrived with the daemon's labels, the daemon's
fingerprints (equal to the ones Alertmanager computes) and generatorURL. Alertmanager is then
stopped and restarted empty while the shift goes on: every alert still firing must reach it again.
Back to reference rows, the alerts resolve and must leave Alertmanager at once (a firing alert
without endsAt would stay for resolve_timeout = 5 min). Also: amtool check-config on the example,
a black-hole Alertmanager does not slow ingest and its failures are counted, and a full queue
counts drops.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from conftest import ROOT, free_port, run_saliencyd, toml_text, wait_for

CONFIG = ROOT / "deploy/alertmanager/alertmanager.yml"
LAYERS = [("conv1", 8), ("conv2", 8)]
K = 16
CALIBRATION = 200
EXTERNAL = "http://saliencyd.test:9464"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; apt-get install prometheus-alertmanager (scripts/test.sh does)")
    return path


class Alertmanager:
    """A real Alertmanager on 127.0.0.1:<port>, gossip disabled, storage under `workdir`."""

    def __init__(self, workdir: Path, port: int, name: str = "am", config: Path = CONFIG):
        self.workdir, self.port, self.name, self.config = Path(workdir), port, name, config
        self.proc = None
        self.log = self.workdir / f"{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Alertmanager":
        storage = self.workdir / f"{self.name}-data"
        storage.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [tool("prometheus-alertmanager"), f"--config.file={self.config}", f"--storage.path={storage}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        def ready():
            assert self.proc.poll() is None, f"alertmanager exited: {self.log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(ready, 20, what="alertmanager ready")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def alerts(self) -> List[Dict]:
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as r:
            return json.loads(r.read())


@pytest.fixture
def alertmanager(tmp_path):
    made: List[Alertmanager] = []

    def make(name: str = "am", port: int = 0) -> Alertmanager:
        am = Alertmanager(tmp_path, port or free_port(), name)
        made.append(am)
        return am.start()

    yield make
    for am in made:
        am.stop()


def am_config(urls: List[str], **keys) -> Dict[str, object]:
    sec = {"urls": "@raw:[" + ", ".join(json.dumps(u) for u in urls) + "]"}
    sec.update(keys)
    return sec


class Stream:
    """Calibration, reference and shifted rows for the 2 × 8 model."""

    def __init__(self, producer, seed: int = 5):
        self.p, self.rng = producer, np.random.default_rng(seed)
        assert producer.wait_for_subscriber(10.0), "the daemon never subscribed to the producer"

    def reference(self, n: int) -> None:
        for _ in range(n):
            self.p.publish((self.rng.lognormal(size=K) * 0.01).astype(np.float32))

    def shifted(self, n: int, filters=(2, 5, 9, 12, 13, 14)) -> None:
        for _ in range(n):
            row = self.rng.lognormal(size=K) * 0.01
            row[list(filters)] *= 1e4
            self.p.publish(row.astype(np.float32))


def active_alerts(d) -> List[Dict]:
    return d.query({"op": "alerts", "active": True})["alerts"]


def by_fingerprint(alerts: List[Dict]) -> Dict[str, Dict]:
    return {a["fingerprint"]: a for a in alerts}


def test_example_config_checks():
    r = subprocess.run([tool("amtool"), "check-config", str(CONFIG)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "1 inhibit rules" in r.stdout
    text = CONFIG.read_text()
    # The label values the example matches on are the ones the daemon sets (ModelEngine.swift).
    engine = (ROOT / "Sources/Monitor/ModelEngine.swift").read_text()
    for value in ("SalientFilter", "ModelShift"):
        assert f'alertname="{value}"' in text and f'"alertname": "{value}"' in engine


def test_check_config(tmp_path):
    """--check-config prints the section, refuses anything but http:// with the reason, warns on a long resend."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_text({"alertmanager": am_config(["http://127.0.0.1:9093", "http://127.0.0.1:9094"], resend_interval=200)}))
    r = run_saliencyd("--check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert '[alertmanager] urls = ["http://127.0.0.1:9093", "http://127.0.0.1:9094"]' in r.stdout
    assert "warning: alertmanager.resend_interval = 200.0 s" in r.stdout
    for url, why in [("https://am:9093", "uses https"), ("am:9093", "is not an http:// URL"), ("http://am:9093?x=1", "query")]:
        cfg.write_text(toml_text({"alertmanager": am_config([url])}))
        r = run_saliencyd("--check-config", "--config", str(cfg))
        assert r.returncode == 2 and why in r.stdout + r.stderr, (url, r.stdout, r.stderr)
    cfg.write_text(toml_text({"alertmanager": am_config(["http://am:9093"], resend_interval=300)}))
    r = run_saliencyd("--check-config", "--config", str(cfg))
    assert r.returncode == 2 and "resend_interval" in r.stderr + r.stdout


def test_delivery_fingerprints_restart_and_resolve(saliencyd, alertmanager):
    am = alertmanager("am1")
    d = saliencyd(calibration=CALIBRATION, config_sections={
        "alertmanager": am_config([am.url], resend_interval=1, max_backoff=1, timeout=2, external_url=EXTERNAL),
        "alerting": {"model_burn_in": 100}})
    assert "alert delivery to 1 Alertmanager" in d.log_text()
    p = d.producer("amtest", LAYERS)
    s = Stream(p)
    s.reference(CALIBRATION + 150)          # calibration, then clean rows (model_burn_in only matters for burn_in)
    d.wait_rows("amtest", CALIBRATION + 150)
    s.shifted(80)
    d.wait_rows("amtest", CALIBRATION + 230)

    fired = wait_for(lambda: (lambda a: a if any(x["labels"]["alertname"] == "ModelShift" for x in a)
                              and sum(x["labels"]["alertname"] == "SalientFilter" for x in a) >= 3 else None)(active_alerts(d)),
                     20, what="filter alerts and the model-level alert firing in the daemon")
    ours = by_fingerprint(fired)

    def arrived():
        theirs = by_fingerprint(am.alerts())
        return theirs if set(ours) <= set(theirs) else None
    theirs = wait_for(arrived, 20, what="the daemon's firing alerts in Alertmanager")
    for fp, a in ours.items():
        t = theirs[fp]
        # Alertmanager computed this fingerprint itself from the labels it received.
        assert t["fingerprint"] == a["fingerprint"] == fp
        assert t["labels"] == a["labels"]
        assert t["annotations"] == a["annotations"]
        model = urllib.parse.quote(a["model"], safe="")
        want = f"{EXTERNAL}/filter/{model}/{a['filter']}" if a.get("filter") is not None else f"{EXTERNAL}/model/{model}"
        assert t["generatorURL"] == want
        assert t["status"]["state"] in ("active", "suppressed")
    # The example's inhibit rule: ModelShift suppresses the same model's SalientFilter alerts.
    shift_fp = next(fp for fp, a in ours.items() if a["labels"]["alertname"] == "ModelShift")
    assert theirs[shift_fp]["status"]["state"] == "active"
    def inhibited():
        al = by_fingerprint(am.alerts())
        return all(al[fp]["status"]["inhibitedBy"] == [shift_fp] for fp, a in ours.items() if a["labels"]["alertname"] == "SalientFilter")
    wait_for(inhibited, 10, what="SalientFilter alerts inhibited by ModelShift")

    # Alertmanager goes away; the shift goes on; it comes back empty on the same port.
    am.stop()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        s.shifted(5)
        time.sleep(0.1)
    wait_for(lambda: "Alertmanager unreachable" in d.log_text(), 10, what="the daemon logging the target down")
    still = by_fingerprint(active_alerts(d))
    assert len(still) >= 3, f"the shift should keep alerts firing: {still}"
    am2 = alertmanager("am2", port=am.port)      # fresh storage: it knows nothing
    s.shifted(5)
    back = wait_for(lambda: (lambda t: t if set(still) <= set(t) else None)(by_fingerprint(am2.alerts())), 20,
                    what="every firing alert re-sent to the restarted Alertmanager")
    for fp in still:
        assert back[fp]["labels"] == still[fp]["labels"]
    wait_for(lambda: "Alertmanager reachable again" in d.log_text(), 10, what="the daemon logging the target up")

    # Back to the reference: filter alerts resolve in the daemon, and leave Alertmanager now
    # (resolved with endsAt), not after resolve_timeout.
    s.reference(150)
    d.wait_rows("amtest", p.sequence)
    def resolved_in_daemon():
        now = by_fingerprint(active_alerts(d))
        gone = [fp for fp in still if fp not in now and still[fp]["labels"]["alertname"] == "SalientFilter"]
        return gone or None
    gone = wait_for(resolved_in_daemon, 20, what="filter alerts resolved in the daemon")
    log = d.query({"op": "alerts", "since": 0})["alerts"]
    assert any(a["status"] == "resolved" and a["fingerprint"] in gone and a["endsAt"] != "0001-01-01T00:00:00Z" for a in log)
    wait_for(lambda: not (set(gone) & set(by_fingerprint(am2.alerts()))), 15,
             what="resolved alerts leaving Alertmanager (sent with endsAt)")
    d.stop()
    assert "alert delivery stopped" in d.log_text()


def test_reload_moves_delivery(saliencyd, alertmanager):
    """SIGHUP with new urls: the firing alerts reach the new Alertmanager at once."""
    hole = BlackHole()
    try:
        am = alertmanager("am-reload")
        d = saliencyd(calibration=CALIBRATION, config_sections={
            "alertmanager": am_config([hole.url], timeout=0.5, resend_interval=30, max_backoff=1)})
        p = d.producer("reload", LAYERS)
        s = Stream(p)
        s.reference(CALIBRATION)
        s.shifted(20)
        d.wait_rows("reload", CALIBRATION + 20)
        firing = wait_for(lambda: (lambda a: a if len(a) >= 3 else None)(active_alerts(d)), 20, what="filter alerts firing")
        assert am.alerts() == []
        d.write_config(toml_text({"alertmanager": am_config([am.url], resend_interval=30)}))
        d.sighup()
        wait_for(lambda: "configuration reloaded" in d.log_text(), 10, what="the reload applied")
        # resend_interval is 30 s: arriving within 10 s means the reload re-sent the firing set itself.
        got = wait_for(lambda: (lambda t: t if set(by_fingerprint(firing)) <= set(t) else None)(by_fingerprint(am.alerts())),
                       10, what="firing alerts at the Alertmanager named by the reload")
        assert all(got[fp]["labels"] == a["labels"] for fp, a in by_fingerprint(firing).items())
        assert d.log_text().count("alert delivery to 1 Alertmanager") == 2
    finally:
        hole.close()


class BlackHole:
    """A listening TCP socket that never accepts: connects succeed, nothing is ever answered."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self):
        self.sock.close()


def ingest_rate(d, model: str, rows: int) -> float:
    """Rows/s the daemon ingests: calibration, then `rows` rows of which every 20th shifts filters
    (alerts fire and resolve all along, each one handed to the forwarder)."""
    p = d.producer(model, LAYERS)
    s = Stream(p, seed=11)
    s.reference(CALIBRATION)
    d.wait_rows(model, CALIBRATION)
    t0 = time.monotonic()
    for i in range(rows // 20):
        s.shifted(4, filters=tuple(range(16)) if i % 2 else (1, 3, 6))
        s.reference(16)
    d.wait_rows(model, CALIBRATION + rows, timeout=120)
    return rows / (time.monotonic() - t0)


def metric(text: str, name: str) -> float:
    vals = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{") or l.startswith(name + " ")]
    assert vals, f"{name} not in /metrics"
    return sum(vals)


def test_black_hole_does_not_slow_ingest_and_counts(saliencyd):
    hole = BlackHole()
    try:
        plain = saliencyd(name="plain", calibration=CALIBRATION)
        d = saliencyd(name="hole", calibration=CALIBRATION, metrics=True, config_sections={
            "alertmanager": am_config([hole.url], timeout=0.5, max_backoff=1, queue_capacity=10, resend_interval=1)})
        base, rate = [], []
        for r in range(3):                       # interleaved, best of 3: the machine is shared
            base.append(ingest_rate(plain, f"bh{r}", 10000))
            rate.append(ingest_rate(d, f"bh{r}", 10000))
        assert d.query({"op": "alerts", "since": 0})["alerts"], "no alerts fired: the test shows nothing"
        print(f"ingest rows/s without Alertmanager {[round(x) for x in base]}, with a black-hole Alertmanager {[round(x) for x in rate]}")
        assert max(rate) > 0.6 * max(base), f"a black-hole Alertmanager slowed ingest: {max(rate):.0f} rows/s vs {max(base):.0f}"
        log = wait_for(lambda: (lambda t: t if "Alertmanager unreachable" in t and "timed out" in t else None)(d.log_text()),
                       10, what="the black hole's timeouts in the log")
        # Queue overflow: 16 alerts in one row while the forwarder waits out a 0.5 s timeout, capacity 10.
        assert "Alertmanager queue full" in log
        m = wait_for(lambda: (lambda t: t if metric(t, "saliencyd_alertmanager_requests_failed_total") >= 2 else None)(d.metrics_text()),
                     10, what="failed POSTs counted")
        assert metric(m, "saliencyd_alertmanager_alerts_dropped_total") >= 1
        assert metric(m, "saliencyd_alertmanager_alerts_failed_total") >= 1
        assert metric(m, "saliencyd_alertmanager_alerts_sent_total") == 0
        assert metric(m, "saliencyd_alertmanager_up") == 0
    finally:
        hole.close()
