"""CURVE key files the ZeroMQ ecosystem reads and writes (issue 11, item 5), on a real daemon.

- `saliencyctl keygen NAME` writes ZeroMQ certificates that pyzmq's `zmq.auth.load_certificate` reads;
- certificates made by `zmq.auth.create_certificates` are accepted by saliencyd (server secret,
  a certificate directory as the allow-list, a public certificate as the admin list) and by
  saliencyctl (--server-key, --client-key);
- the Python Publisher, QueryClient and AlertSubscriber talk to that CURVE daemon end to end, and a
  client with a key the daemon does not know gets nothing;
- saliencyd 0.1 key files (`public = …` / `secret = …`) still work.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
import zmq.auth

from conftest import ROOT, ctl_bin, wait_for

sys.path.insert(0, str(ROOT / "clients/python"))
from saliency_tap import AlertSubscriber, CurveKeys, Publisher, QueryClient  # noqa: E402

LAYERS = [{"name": "conv1", "filters": 8}, {"name": "conv2", "filters": 8}]


def ctl(*args, timeout=30):
    return subprocess.run([str(ctl_bin()), *args], capture_output=True, text=True, timeout=timeout)


def curve_daemon(saliencyd, security, calibration=100):
    """A daemon with `[security]` = `security`, started without the conftest status probe (which has
    no CURVE keys); readiness is checked by the caller with a CURVE client."""
    d = saliencyd(start=False, calibration=calibration, endpoint_flags=False,
                  config_sections={"security": {"curve": True, **security}, "alerts": {"resend_interval": 1.0}})
    d.start(wait=False)
    return d


def wait_status(d, curve, timeout=30.0):
    def ask():
        if d.proc.poll() is not None:
            raise AssertionError(f"saliencyd exited with {d.proc.returncode}:\n{d.log_tail()}")
        q = QueryClient(d.endpoints["query"], timeout=1.0, curve=curve)
        try:
            return q.status()
        except TimeoutError:
            return None
        finally:
            q.close()
    return wait_for(ask, timeout, what="a CURVE status answer")


def test_keygen_writes_certificates_pyzmq_loads(tmp_path):
    name = tmp_path / "server.key"
    r = ctl("keygen", str(name))
    assert r.returncode == 0, r.stderr
    secret = tmp_path / "server.key_secret"
    assert name.exists() and secret.exists(), os.listdir(tmp_path)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(name.stat().st_mode) == 0o644
    pub, sec = zmq.auth.load_certificate(str(name))
    assert sec is None and len(pub) == 40
    pub2, sec2 = zmq.auth.load_certificate(str(secret))
    assert pub2 == pub and sec2 is not None and zmq.curve_public(sec2) == pub
    assert pub.decode() in r.stdout
    text = secret.read_text()
    assert "metadata\n" in text and "curve\n" in text and f'    secret-key = "{sec2.decode()}"' in text
    # Never overwrites silently.
    again = ctl("keygen", str(name))
    assert again.returncode != 0 and "exists" in again.stderr and "--force" in again.stderr
    assert zmq.auth.load_certificate(str(secret))[1] == sec2
    assert ctl("keygen", str(name), "--force").returncode == 0
    assert zmq.auth.load_certificate(str(secret))[1] != sec2


def test_pyzmq_certificates_end_to_end_with_python_clients(saliencyd, tmp_path):
    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    server_pub, server_sec = zmq.auth.create_certificates(str(keys), "server")
    client_pub, client_sec = zmq.auth.create_certificates(str(allowed), "client")   # certificate directory
    admin_pub, admin_sec = zmq.auth.create_certificates(str(keys), "admin")
    stranger_pub, stranger_sec = zmq.auth.create_certificates(str(keys), "stranger")
    # server_secret_key_file names the PUBLIC certificate: NAME_secret beside it is read (czmq's rule).
    d = curve_daemon(saliencyd, {"server_secret_key_file": server_pub, "allowed_clients_file": str(allowed),
                                 "admin_clients_file": admin_pub})
    client = CurveKeys.from_files(server_pub, client_sec)
    st = wait_status(d, client)
    assert st["ok"]
    assert "CURVE enabled" in d.log_text()

    # A key the daemon does not know: no answer at all (the ZAP handler refuses the handshake).
    stranger = QueryClient(d.endpoints["query"], timeout=1.5, curve=(server_pub, stranger_sec))
    with pytest.raises(TimeoutError):
        stranger.status()
    stranger.close()
    # The right client key but a wrong server key: nothing either.
    wrong = QueryClient(d.endpoints["query"], timeout=1.5, curve=CurveKeys(zmq.auth.load_certificate(stranger_pub)[0], client.public, client.secret))
    with pytest.raises(TimeoutError):
        wrong.status()
    wrong.close()

    # Publisher → daemon → AlertSubscriber and QueryClient, all over CURVE.
    alerts = AlertSubscriber(d.endpoints["alerts"], prefix="alert.firing.", curve=(server_pub, client_pub))  # NAME: NAME_secret is read
    schema = {"model": "curvy", "layers": LAYERS}
    pub = Publisher(d.endpoints["feed"], "curvy", schema, curve=client)
    assert pub.wait_for_subscriber(10), "the daemon's feed never subscribed over CURVE"
    rng = np.random.default_rng(7)
    for r in np.exp(0.5 * rng.standard_normal((120, 16))).astype(np.float32):
        pub.publish(r)
    shifted = np.exp(0.5 * rng.standard_normal((40, 16))).astype(np.float32)
    shifted[:, [3, 11]] *= 1000.0
    for r in shifted:
        pub.publish(r)
    q = QueryClient(d.endpoints["query"], timeout=3.0, curve=client)
    wait_for(lambda: (lambda m: m and m[0]["rows"] >= 160)([m for m in q.status()["models"] if m["model"] == "curvy"]), 20,
             what="160 rows of 'curvy' counted")
    got = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and {a["filter"] for a in got} < {3, 11}:
        a = alerts.recv(timeout=0.5)
        if a is not None:
            got.append(a)
    assert {a["filter"] for a in got} >= {3, 11}, f"alerts over CURVE: {got}"
    top = q.top("curvy", k=2)
    assert {e["filter"] for e in top["top"]} == {3, 11}
    # Admin queries: refused for the client, allowed for the admin certificate.
    with pytest.raises(Exception) as e:
        q.request("snapshot")
    assert "forbidden" in str(e.value)
    admin = QueryClient(d.endpoints["query"], timeout=3.0, curve=(server_pub, admin_sec))
    assert admin.request("snapshot")["ok"]
    for c in (q, admin, pub, alerts):
        c.close()

    # saliencyctl with the same pyzmq certificates (--client-key NAME finds NAME_secret).
    r = ctl("status", "--json", "--query", d.endpoints["query"], "--server-key", server_pub, "--client-key", client_pub, "--timeout", "3")
    assert r.returncode == 0, r.stderr
    assert any(m["model"] == "curvy" for m in json.loads(r.stdout)["models"])
    r = ctl("status", "--query", d.endpoints["query"], "--server-key", server_pub, "--client-key", stranger_sec, "--timeout", "1")
    assert r.returncode != 0 and "CURVE keys" in r.stderr
    assert d.stop() == 0


def test_keygen_certificates_and_old_key_files_both_work(saliencyd, tmp_path):
    # Server: a saliencyd 0.1 key file. Clients: one from today's keygen, one 0.1 `.pub` line.
    spub, ssec = zmq.curve_keypair()
    (tmp_path / "server.key").write_text(f"# saliencyd CURVE key pair (Z85)\npublic = {spub.decode()}\nsecret = {ssec.decode()}\n")
    (tmp_path / "server.key.pub").write_text(f"# saliencyd CURVE public key (Z85)\npublic = {spub.decode()}\n")
    os.chmod(tmp_path / "server.key", 0o600)
    assert ctl("keygen", str(tmp_path / "new")).returncode == 0
    opub, osec = zmq.curve_keypair()
    (tmp_path / "old.key").write_text(f"public = {opub.decode()}\nsecret = {osec.decode()}\n")
    # The allow-list: a keygen public certificate, a 0.1 `public = ` line and a bare key, concatenated.
    bare_pub, bare_sec = zmq.curve_keypair()
    (tmp_path / "clients.allow").write_text((tmp_path / "new").read_text() + f"public = {opub.decode()}\n{bare_pub.decode()}\n")
    d = curve_daemon(saliencyd, {"server_secret_key_file": str(tmp_path / "server.key"),
                                 "allowed_clients_file": str(tmp_path / "clients.allow")})
    wait_status(d, CurveKeys(spub, opub, osec))
    for client_key in (tmp_path / "new", tmp_path / "new_secret", tmp_path / "old.key"):
        r = ctl("status", "--query", d.endpoints["query"], "--server-key", str(tmp_path / "server.key.pub"),
                "--client-key", str(client_key), "--timeout", "3")
        assert r.returncode == 0, f"{client_key.name}: {r.stderr}"
    q = QueryClient(d.endpoints["query"], timeout=3.0, curve=CurveKeys(spub, bare_pub, bare_sec))
    assert q.status()["ok"]
    q.close()
    # The Python side reads the 0.1 files too.
    assert CurveKeys.from_files(tmp_path / "server.key.pub", tmp_path / "old.key") == CurveKeys(spub, opub, osec)
    assert d.stop() == 0


def test_a_secret_key_in_an_allow_list_is_refused(tmp_path):
    from conftest import run_saliencyd, toml_text
    assert ctl("keygen", str(tmp_path / "server")).returncode == 0
    assert ctl("keygen", str(tmp_path / "client")).returncode == 0
    cfg = tmp_path / "c.toml"
    sock = tmp_path / "s"
    cfg.write_text(toml_text({"security": {"curve": True, "server_secret_key_file": str(tmp_path / "server"),
                                           "allowed_clients_file": str(tmp_path / "client_secret")},
                              "feed": {"endpoint": f"ipc://{sock}-f"}, "alerts": {"endpoint": f"ipc://{sock}-a"},
                              "query": {"endpoint": f"ipc://{sock}-q"}, "state": {"directory": str(tmp_path / "st")},
                              "metrics": {"listen": ""}}))
    r = run_saliencyd("--config", str(cfg), timeout=20)
    assert r.returncode != 0
    assert "secret key" in r.stderr and "client_secret" in r.stderr, r.stderr[-600:]
