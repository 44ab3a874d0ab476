"""The daemon as systemd and an operator see it: sd_notify (READY, STATUS, WATCHDOG, RELOADING,
STOPPING) on $NOTIFY_SOCKET, SIGHUP reload (applied / refused), /metrics, --check-config, SIGTERM.

The daemon is a conftest `Daemon` whose endpoints come from its config file (endpoint_flags=False)
and whose environment carries NOTIFY_SOCKET and WATCHDOG_USEC."""
import signal
import socket
import time
import urllib.request

from saliency_tap import QueryClient

from conftest import free_port, run_saliencyd


def read_until(sock, wanted, timeout=20.0):
    """Collects notify datagrams until one contains `wanted`; returns all seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        seen.append(msg)
        if wanted in msg:
            return seen
    raise AssertionError(f"no {wanted!r} in {seen}")


def drain(sock):
    """Discards queued datagrams (Linux queues ~10 per socket; the daemon drops, never blocks, beyond)."""
    sock.setblocking(False)
    try:
        while True:
            sock.recv(4096)
    except BlockingIOError:
        pass
    sock.setblocking(True)


def config(path, resend=30, level=0.9, port=0, max_peaks=256):
    path.write_text(f"""
[feed]
endpoint = "ipc://{path.parent}/feed"
[alerts]
endpoint = "ipc://{path.parent}/alerts"
resend_interval = {resend}
[query]
endpoint = "ipc://{path.parent}/query"
[metrics]
listen = "127.0.0.1:{port}"
[pot]
level = {level}
calibration = 100
max_peaks = {max_peaks}
""")


def test_notify_reload_metrics_and_stop(saliencyd, tmp_path):
    notify_path = str(tmp_path / "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(notify_path)
    port = free_port()
    cfg = tmp_path / "saliencyd.toml"
    config(cfg, port=port)
    d = saliencyd(start=False, name="daemon", endpoint_flags=False,
                  endpoints={k: f"ipc://{tmp_path}/{k}" for k in ("feed", "alerts", "query")},
                  flags=["--config", str(cfg), "--state-dir", str(tmp_path / "state")],
                  env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"})
    try:
        d.start(wait=False)                              # READY=1 on the notify socket is the readiness check
        seen = read_until(ns, "READY=1")
        assert any("STATUS=" in m for m in seen)
        read_until(ns, "WATCHDOG=1", timeout=2.0)          # pinged by the engine loop at half the interval

        body = ""
        for _ in range(50):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert "saliencyd_snapshots_total" in body
        assert "saliencyd_build_info" in body and f'version="{run_saliencyd("--version").stdout.split()[-1]}"' in body
        q = QueryClient(d.endpoints["query"], timeout=3.0)
        st = q.status()
        assert st["ok"]
        # The kernels' instruction set is the same in the status reply and the metric.
        assert st["kernels"] in ("avx2", "sse2", "generic") and f'kernels="{st["kernels"]}"' in body

        # Feed a small model: per-layer and bounded top-k series appear (every 5 s), none per filter.
        import numpy as np
        from saliency_tap import Publisher
        schema = {"model": "sys", "layers": [{"name": "a", "filters": 6}, {"name": "b", "filters": 9}]}
        pub = Publisher(d.endpoints["feed"], "sys", schema)
        assert pub.wait_for_subscriber(10.0)
        rng = np.random.default_rng(0)
        for i in range(150):
            row = np.exp(rng.standard_normal(15)).astype(np.float32)
            if i >= 120:
                row[4] = 1e4
            pub.publish(row)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            if 'saliencyd_top_score{model="sys",rank="1"}' in body or 'saliencyd_top_score{rank="1",model="sys"}' in body:
                break
            time.sleep(0.5)
        assert "saliencyd_top_score" in body and 'rank="10"' in body
        assert "saliencyd_layer_extreme_exceedances_total" in body and 'layer="a"' in body
        assert 'saliencyd_predictions_total{model="sys"} 150' in body
        assert "filter=" not in body
        pub.close()

        # The daemon kept running while nobody read the notify socket (it drops, never blocks).
        assert q.status()["ok"]
        # A reloadable change is applied…
        config(cfg, resend=5, port=port)
        drain(ns)
        d.sighup()
        seen = read_until(ns, "READY=1")
        assert any("RELOADING=1" in m and "MONOTONIC_USEC=" in m for m in seen)
        time.sleep(0.3)
        assert "configuration reloaded" in d.log_text()
        # …one that needs a restart is refused, and the daemon keeps serving.
        config(cfg, resend=5, port=port, max_peaks=128)
        drain(ns)
        d.sighup()
        read_until(ns, "READY=1")
        time.sleep(0.3)
        text = d.log_text()
        assert "configuration reload refused" in text and "pot" in text
        assert q.status()["ok"]
        q.close()

        drain(ns)
        d.send_signal(signal.SIGTERM)
        read_until(ns, "STOPPING=1")
        assert d.wait_exit(timeout=30) == 0
    finally:
        d.kill()
        ns.close()


def test_check_config_explains_mistakes(tmp_path):
    good = tmp_path / "good.toml"
    config(good)
    ok = run_saliencyd("--check-config", "--config", str(good))
    assert ok.returncode == 0 and "configuration OK" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[pot]\nlevle = 0.9\n[feed]\nendpoint = \"localhost:1\"\n")
    r = run_saliencyd("--check-config", "--config", str(bad))
    assert r.returncode == 2
    assert "pot.levle" in r.stderr and "did you mean 'level'" in r.stderr
    r = run_saliencyd("--check-config", "--calibration", "3")
    assert r.returncode == 2 and "calibration" in r.stderr
