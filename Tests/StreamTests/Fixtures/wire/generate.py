#!/usr/bin/env python3
"""Regenerates the golden wire fixtures in this folder from a real saliencyd (docs/protocol.md).

    SALIENCYD_BIN=.build/debug/saliencyd python3 Tests/StreamTests/Fixtures/wire/generate.py

Starts the daemon on ipc endpoints in a temporary directory, announces a small model, calibrates
it, shifts two filters so that alerts fire, and stores each reply (and one published alert)
byte for byte as the daemon sent it. Requests (`request-*.json`) are written here in their
canonical form (keys sorted, as `QueryRequest.body` writes them). Tests/StreamTests/WireTests.swift
decodes every file into the Swift wire types and re-encodes it byte for byte; docs/protocol.md
shows them. Values that depend on time (timestamps, uptime, rates) differ between runs.
"""
import json, os, struct, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import zmq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
DAEMON = os.environ.get("SALIENCYD_BIN", str(ROOT / ".build/debug/saliencyd"))
SCHEMA = {"model": "demo", "layers": [{"name": "conv1", "filters": 4}, {"name": "conv2", "filters": 4}]}
REQUESTS = {
    "request-status": {"op": "status"},
    "request-top": {"by": "pot", "k": 3, "model": "demo", "op": "top"},
    "request-top-window": {"by": "zscore", "k": 3, "model": "demo", "op": "top", "window": 8},
    "request-filter": {"filter": 5, "model": "demo", "op": "filter"},
    "request-filter-channel": {"channel": 1, "layer": "conv2", "model": "demo", "op": "filter"},
    "request-alerts": {"op": "alerts", "since": 0},
    "request-alerts-active": {"active": True, "op": "alerts"},
    "request-snapshot": {"op": "snapshot"},
    "request-reset": {"model": "demo", "op": "reset"},
}


def fingerprint(schema):
    h = 0xcbf29ce484222325
    def mix(bs):
        nonlocal h
        for b in bs:
            h ^= b
            h = (h * 0x100000001b3) & (2**64 - 1)
    mix(schema["model"].encode()); mix(b"\0")
    for l in schema["layers"]:
        mix(l["name"].encode()); mix(b"\0"); mix(str(l["filters"]).encode()); mix(b"\0")
    return h


def main():
    run(two_sided=False)
    # A model watching both tails (`[pot] tails = "both"`, docs/statistics.md "Two tails"): filter 2
    # explodes, filter 5 goes dead; `top` and `filter` then say the direction, `filter` has `lower`.
    run(two_sided=True)


def run(two_sided):
    tmp = Path(tempfile.mkdtemp())
    ep = {k: f"ipc://{tmp}/{k}" for k in ("feed", "alerts", "query")}
    config = []
    if two_sided:
        (tmp / "d.toml").write_text('[pot]\ntails = "both"\n')
        config = ["--config", str(tmp / "d.toml")]
    proc = subprocess.Popen([DAEMON, *config, "--feed", ep["feed"], "--alerts", ep["alerts"], "--query", ep["query"],
                             "--state-dir", str(tmp / "state"), "--metrics", "", "--calibration", "200"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = zmq.Context()
    try:
        q = ctx.socket(zmq.REQ); q.RCVTIMEO = 5000; q.connect(ep["query"])
        def ask(req):
            q.send(json.dumps(req, separators=(",", ":"), sort_keys=True).encode())
            return q.recv()
        time.sleep(0.5)
        sub = ctx.socket(zmq.SUB); sub.setsockopt(zmq.SUBSCRIBE, b"alert."); sub.connect(ep["alerts"])
        pub = ctx.socket(zmq.PUB); pub.connect(ep["feed"]); time.sleep(0.5)
        pub.send_multipart([b"schema.demo", json.dumps(SCHEMA).encode()])
        time.sleep(0.2)
        fp, rng, k = fingerprint(SCHEMA), np.random.default_rng(3), 8
        def send(seq, row):
            hdr = struct.pack("<4sHHQQQqiiB3xfQ", b"SALP", 1, 2, fp, 0x5EED, seq, 1_700_000_000_000_000_000, 3, 3, 1, 0.9, 0)
            pub.send_multipart([b"pred.demo", hdr, row.astype(np.float32).tobytes()])
        seq = 0
        for _ in range(1200):
            seq += 1; send(seq, rng.lognormal(size=k) * 0.01)
        for _ in range(40):
            seq += 1; row = rng.lognormal(size=k) * 0.01
            if two_sided:
                row[2] *= 1e4; row[5] = 0.0
            else:
                row[[2, 5]] *= 1e4
            send(seq, row)
        alert = None
        deadline = time.time() + 10
        while time.time() < deadline and alert is None:
            if sub.poll(200):
                alert = sub.recv_multipart()[1]
        if two_sided:
            files = {"reply-top-two-sided": ask(REQUESTS["request-top"]), "reply-filter-two-sided": ask(REQUESTS["request-filter"])}
            for name, body in files.items():
                (HERE / f"{name}.json").write_bytes(body + b"\n")
                print(f"wrote {name}.json ({len(body)} bytes)")
            return
        files = {
            "alert": alert,
            "reply-status": ask({"op": "status"}),
            "reply-top": ask(REQUESTS["request-top"]),
            "reply-filter": ask(REQUESTS["request-filter"]),
            "reply-alerts": ask({"op": "alerts", "since": 0}),
            "reply-error-not-found": ask({"model": "nope", "op": "top"}),
            "reply-error-bad-request": ask({"op": "top", "model": "demo", "k": "5"}),
            "reply-snapshot": ask({"op": "snapshot"}),
            "reply-reset": ask({"model": "demo", "op": "reset"}),
        }
        for name, req in REQUESTS.items():
            files[name] = json.dumps(req, separators=(",", ":"), sort_keys=True).encode()
        for name, body in files.items():
            assert body is not None, name
            (HERE / f"{name}.json").write_bytes(body + b"\n")
            print(f"wrote {name}.json ({len(body)} bytes)")
    finally:
        proc.terminate(); proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
