"""CurveKeys: CURVE client keys for Publisher, QueryClient and AlertSubscriber, from raw keys or
from certificate files (pyzmq/czmq/saliencyctl keygen format, and saliencyd 0.1 key files)."""
import os

import pytest
import zmq
import zmq.auth

from saliency_tap import AlertSubscriber, CurveKeys, Publisher, QueryClient

SCHEMA = {"model": "m", "layers": [{"name": "conv1", "filters": 4}]}


def test_from_certificate_files(tmp_path):
    spub, ssec = zmq.auth.create_certificates(str(tmp_path), "server")
    cpub, csec = zmq.auth.create_certificates(str(tmp_path), "client")
    k = CurveKeys.from_files(spub, csec)
    assert k.server_public == zmq.auth.load_certificate(spub)[0]
    assert (k.public, k.secret) == zmq.auth.load_certificate(csec)
    # NAME (the public certificate) finds NAME_secret beside it.
    assert CurveKeys.from_files(spub, cpub) == k
    # A public certificate alone has no secret: a clear error, not a socket that never connects.
    os.remove(csec)
    with pytest.raises(ValueError, match="no secret key"):
        CurveKeys.from_files(spub, cpub)


def test_from_old_key_files(tmp_path):
    pub, sec = zmq.curve_keypair()
    (tmp_path / "old.key").write_text(f"# saliencyd CURVE key pair (Z85)\npublic = {pub.decode()}\nsecret = {sec.decode()}\n")
    (tmp_path / "old.key.pub").write_text(f"public = {pub.decode()}\n")
    (tmp_path / "secret-only").write_text(f"secret = {sec.decode()}\n")
    assert CurveKeys.from_files(tmp_path / "old.key.pub", tmp_path / "old.key") == CurveKeys(pub, pub, sec)
    assert CurveKeys.from_files(tmp_path / "old.key.pub", tmp_path / "secret-only") == CurveKeys(pub, pub, sec)


def test_bad_keys_are_refused_at_construction():
    pub, sec = zmq.curve_keypair()
    with pytest.raises(ValueError, match="40-character"):
        QueryClient("inproc://x", curve=CurveKeys(b"short", pub, sec))
    with pytest.raises(ValueError, match="Z85"):
        QueryClient("inproc://x", curve=CurveKeys(pub, b'"' * 40, sec))
    with pytest.raises(TypeError):
        QueryClient("inproc://x", curve="server.key")


def test_every_socket_gets_the_keys(tmp_path):
    spub, _ = zmq.auth.create_certificates(str(tmp_path), "server")
    _, csec = zmq.auth.create_certificates(str(tmp_path), "client")
    k = CurveKeys.from_files(spub, csec)
    made = [Publisher("tcp://127.0.0.1:1", "m", SCHEMA, curve=(spub, csec)), QueryClient("tcp://127.0.0.1:1", curve=k),
            AlertSubscriber("tcp://127.0.0.1:1", curve=k)]
    for c in made:   # (libzmq does not read keys back; the right keys are proven in Tests/Python/test_curve_certs.py)
        assert c.socket.mechanism == zmq.CURVE and not c.socket.curve_server
        c.close()
    # Without curve= nothing is set (plain NULL mechanism).
    q = QueryClient("tcp://127.0.0.1:1")
    assert q.socket.mechanism == zmq.NULL
    q.close()
