"""`saliency-tap` command line: record a feed from the wire, replay a recorded feed, print a fingerprint."""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import zmq

from .publisher import Publisher
from .recorder import Recorder, load_feed
from .schema import QUANTITIES, filter_count, schema_fingerprint, schema_quantity
from .wire import unpack_header


def cmd_publish_npy(a) -> int:
    rows, schema, meta = load_feed(a.feed)
    model = a.model or schema["model"]
    if model != schema["model"]:
        schema = dict(schema, model=model)
        schema.pop("fingerprint", None)
    try:
        recorded = schema_quantity(schema)
    except ValueError as e:
        print(f"{a.feed}: schema: {e}", file=sys.stderr)
        return 2
    if a.quantity is not None and a.quantity != recorded:
        if "quantity" in schema:
            print(f"{a.feed}: the recorded schema says its rows are {recorded!r}, --quantity says {a.quantity!r}; "
                  "drop --quantity or fix the schema file", file=sys.stderr)
            return 2
        schema = dict(schema, quantity=a.quantity)    # label a feed recorded without the key
        schema.pop("fingerprint", None)               # the quantity is part of the fingerprint
    if (a.server_key is None) != (a.client_key is None):
        print("--server-key and --client-key go together (CURVE: the daemon's public certificate and yours)", file=sys.stderr)
        return 2
    curve = (a.server_key, a.client_key) if a.server_key else None
    pub = Publisher(a.endpoint, model, schema, connect=not a.bind, schema_interval=a.schema_interval, curve=curve)
    if a.wait > 0 and not pub.wait_for_subscriber(a.wait):
        print(f"no subscriber on {a.endpoint} after {a.wait} s; publishing anyway", file=sys.stderr)
    n = rows.shape[0] if a.count is None else min(a.count, rows.shape[0])
    m = meta or {}
    period = 1.0 / a.rate if a.rate > 0 else 0.0
    t0 = time.monotonic()
    for i in range(n):
        conf = m.get("confidence", [None] * n)[i]
        pub.publish(rows[i], int(m.get("predicted", [-1] * n)[i]), int(m.get("target", [-1] * n)[i]),
                    int(m.get("target_kind", [0] * n)[i]), conf, sample_id=i)
        if period:
            delay = t0 + (i + 1) * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    pub.close()
    print(f"published {n} rows of {a.feed} (K={rows.shape[1]}, {schema_quantity(schema)}) as pred.{model} to {a.endpoint}")
    return 0


def cmd_record(a) -> int:
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    topic = "" if a.model is None else f".{a.model}"
    for kind in ("schema", "pred"):
        sub.setsockopt(zmq.SUBSCRIBE, (kind + topic).encode())
    (sub.connect if a.connect else sub.bind)(a.endpoint)
    schemas = {}
    rec = None
    dropped = 0
    deadline = time.monotonic() + a.timeout
    while rec is None or len(rec) < a.count:
        left = deadline - time.monotonic()
        if left <= 0 or not sub.poll(int(left * 1000), zmq.POLLIN):
            break
        frames = sub.recv_multipart()
        if frames[0].startswith(b"schema."):
            s = json.loads(frames[1])
            schemas[schema_fingerprint(s)] = s
            continue
        if len(frames) != 3:
            dropped += 1
            continue
        h = unpack_header(frames[1])
        s = schemas.get(h.fingerprint)
        if s is None:
            dropped += 1
            continue
        if rec is None:
            rec = Recorder(a.out, s)
        elif h.fingerprint != schema_fingerprint(rec.schema):
            dropped += 1
            continue
        row = np.frombuffer(frames[2], dtype="<f4")
        if row.shape[0] != filter_count(s):
            dropped += 1
            continue
        rec.append(row, h.predicted, h.target, h.target_kind, h.confidence,
                   sample_id=h.sample_id, sequence=h.sequence)
    sub.close()
    if rec is None:
        print(f"no predictions recorded (dropped {dropped} without a schema)", file=sys.stderr)
        return 1
    paths = rec.save()
    print(f"recorded {len(rec)} rows (dropped {dropped}) -> {', '.join(paths)}")
    return 0


def cmd_fingerprint(a) -> int:
    with open(a.schema) as f:
        s = json.load(f)
    print(format(schema_fingerprint(s), "016x"))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="saliency-tap", description=__doc__)
    sp = p.add_subparsers(dest="cmd", required=True)

    q = sp.add_parser("publish-npy", help="replay a recorded feed (<prefix>.npy + .schema.json [+ .meta.json])")
    q.add_argument("feed", help="feed prefix or .npy path")
    q.add_argument("--endpoint", default="tcp://127.0.0.1:5560")
    q.add_argument("--bind", action="store_true", help="bind instead of connect")
    q.add_argument("--model", help="publish under this model name (default: the schema's)")
    q.add_argument("--rate", type=float, default=0.0, help="rows per second (0 = as fast as possible)")
    q.add_argument("--count", type=int, help="publish only the first COUNT rows")
    q.add_argument("--quantity", choices=QUANTITIES,
                   help="what the recorded rows hold: 'saliency' (per-filter mean |dL/dW|) or 'taylor' (Taylor "
                        "blame, per-filter max(0, sum w*dL/dw)); 'taylor' adds \"quantity\": \"taylor\" to the "
                        "schema sent (default: what the recorded schema says, saliency when it says nothing; a "
                        "contradiction is an error). Publish a Taylor feed under its own --model name, e.g. NAME-taylor"),
    q.add_argument("--wait", type=float, default=2.0, help="seconds to wait for a subscriber first")
    q.add_argument("--schema-interval", type=float, default=10.0)
    q.add_argument("--server-key", help="CURVE: the daemon's public certificate (saliencyctl keygen / zmq.auth)")
    q.add_argument("--client-key", help="CURVE: this client's secret certificate (or NAME with NAME_secret beside it)")
    q.set_defaults(func=cmd_publish_npy)

    r = sp.add_parser("record", help="record pred messages from the wire into <out>.npy/.schema.json/.meta.json")
    r.add_argument("out", help="output prefix")
    r.add_argument("--endpoint", default="tcp://127.0.0.1:5560")
    r.add_argument("--connect", action="store_true", help="connect instead of bind")
    r.add_argument("--model", help="only this model")
    r.add_argument("--count", type=int, default=1000)
    r.add_argument("--timeout", type=float, default=60.0, help="stop after this many seconds")
    r.set_defaults(func=cmd_record)

    f = sp.add_parser("fingerprint", help="print the FNV-1a fingerprint of a schema JSON file")
    f.add_argument("schema")
    f.set_defaults(func=cmd_fingerprint)

    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
