#!/usr/bin/env python3
"""Write data/feeds/fmnist/zeroed.{npy,schema.json,meta.json}: the "zeroed only" faulty model of
docs/results.md "Planted faults, one kind at a time" (experiments/faults.py --per-kind, kind "zeroed").

The same seeded draws as record_feed.main / faults.py per_kind: record_feed.plant_faults(kinds={"zeroed"})
zeroes conv1[11], conv3[29], conv5[86], down[69] of the healthy model (data/fmnist_cnn.pt); the rows are
the saliency of the same 400 held-out test images as the bundled `faulty` feed (200 of them stamped
with the trigger, which a zeroed-only model ignores), true-label target, one torch thread.
~20 s on one core. Used by experiments/daemon_localization.py and Tests/Python/test_daemon_lower_tail.py.

    python3 data/make_zeroed_feed.py [--out PREFIX]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

from record_feed import one_kind  # noqa: E402
from train_fmnist import load_fmnist, load_model  # noqa: E402
from saliency_tap import load_feed  # noqa: E402

FEED_DIR = os.path.join(HERE, "feeds", "fmnist")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(FEED_DIR, "zeroed"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, schema, _ = load_feed(os.path.join(FEED_DIR, "reference"))
    _, _, fmeta = load_feed(os.path.join(FEED_DIR, "faulty"))
    with open(os.path.join(FEED_DIR, "faulty.faults.json")) as f:
        info = json.load(f)
    model = load_model()
    xte, yte = load_fmnist("test")
    xtr, ytr = load_fmnist("train")
    _, planted, fault_i, _, trig, b = one_kind(model, schema, "zeroed", xte, yte, xtr, ytr, fmeta, info)
    rows = np.ascontiguousarray(b.saliency, dtype=np.float32)
    np.save(args.out + ".npy", rows)
    with open(args.out + ".schema.json", "w") as f:
        json.dump(schema, f)
    meta = {"source": "data/make_zeroed_feed.py (record_feed.plant_faults, kinds={'zeroed'})",
            "model": schema["model"], "rows": int(rows.shape[0]), "target": "true label",
            "planted": planted, "triggered": [bool(t) for t in trig],
            "labels": [int(y) for y in yte[fault_i]], "predicted": [int(p) for p in b.predicted],
            "accuracy": float(np.mean(b.predicted == yte[fault_i]))}
    with open(args.out + ".meta.json", "w") as f:
        json.dump(meta, f)
    print(f"wrote {args.out}.npy {rows.shape}, planted " + ", ".join(f"{p['layer']}[{p['channel']}]" for p in planted)
          + f", accuracy on the rows {meta['accuracy']:.3f}, mean saliency {rows.mean():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
