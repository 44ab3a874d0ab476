#!/usr/bin/env python3
"""Issue 13: per-row recall@20 / MRR of the 4 zeroed filters IN THE DAEMON (a real saliencyd fed over
ZeroMQ), per `[pot] tails` and `[pot] transform`, next to the same rows scored offline.

Rows: calibration = data/feeds/fmnist/reference.npy (1000 rows, healthy model); faulty rows =
data/feeds/fmnist/zeroed.npy (400 rows of the "zeroed only" model of docs/results.md "Planted faults,
one kind at a time": conv1[11], conv3[29], conv5[86], down[69]; written by data/make_zeroed_feed.py,
which reuses record_feed.plant_faults(kinds={"zeroed"})).

For each configuration a fresh saliencyd (Tests/Python/conftest.py `Daemon`: tmp state dir, private ipc
endpoints) with `[pot] calibration = 1000` and the tails/transform under test gets the 1000 reference
rows, then the faulty rows ONE AT A TIME; after each row it is asked `{"op": "top", "k": 400, "window":
"latest", "by": pot|logres-pot}` (all 400 filters, so the rank of every planted filter is known; ties
are ordered by the daemon). The daemon keeps learning from the faulty rows (as deployed).
Offline: `saliencyctl analyze --stream` (the daemon's statistics, rows absorbed after scoring) and
`experiments/common.py` LowerTail(POT) (the numbers in docs/results.md, scored against the reference only).

    python3 experiments/daemon_localization.py [--rows 400] [--configs upper,lower,...] [--json out.json]

Metrics per row: recall@20 = fraction of the 4 planted filters ranked <= 20; MRR = mean over the 4 of
1/rank (ties pessimistic: rank = number of filters scoring >= the target; the rank in the daemon's own
order, which breaks ties, is kept as "daemon_order"); both averaged over rows with a 95 % bootstrap interval over rows (2000 resamples, seed 0).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "Tests" / "Python"))
from conftest import Daemon, ctl_bin  # noqa: E402

FEED = ROOT / "data" / "feeds" / "fmnist"
CONFIGS = {  # name: (tails, transform, by)
    "upper": ("upper", "none", "pot"),
    "lower": ("lower", "none", "pot"),
    "both": ("both", "none", "pot"),
    "upper+logres": ("upper", "layer-logres", "logres-pot"),
    "lower+logres": ("lower", "layer-logres", "logres-pot"),
    "both+logres": ("both", "layer-logres", "logres-pot"),
}


def load():
    ref = np.load(FEED / "reference.npy").astype(np.float32)
    rows = np.load(FEED / "zeroed.npy").astype(np.float32)
    schema = json.loads((FEED / "reference.schema.json").read_text())
    meta = json.loads((FEED / "zeroed.meta.json").read_text())
    targets = [p["filter"] for p in meta["planted"]]
    return ref, rows, schema, targets


def metrics(ranks, k=20, boot=2000, seed=0):
    """ranks [rows, targets] (1-based) -> dict of recall@k, MRR with 95% bootstrap intervals over rows."""
    ranks = np.asarray(ranks, dtype=float)
    rec = (ranks <= k).mean(1)
    rr = (1.0 / ranks).mean(1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ranks), size=(boot, len(ranks)))
    out = {"rows": int(len(ranks))}
    for name, v in (("recall", rec), ("mrr", rr)):
        bs = v[idx].mean(1)
        out[name] = float(v.mean())
        out[name + "_ci"] = [float(np.quantile(bs, 0.025)), float(np.quantile(bs, 0.975))]
    out["recall_per_filter"] = [float(x) for x in (ranks <= k).mean(0)]
    out["median_rank_per_filter"] = [float(x) for x in np.median(ranks, 0)]
    return out


def run_daemon(workdir, tails, transform, by, ref, rows, schema, targets, binary=None, name="d"):
    """Feeds ref then rows one at a time to a real saliencyd; returns ranks [rows, targets] and timing."""
    model = schema["model"]
    layers = [(l["name"], l["filters"]) for l in schema["layers"]]
    K = sum(f for _, f in layers)
    d = Daemon(Path(workdir), name, calibration=len(ref), binary=binary,
               config_sections={"pot": {"tails": tails, "transform": transform}})
    try:
        d.start()
        prod = d.producer(model, layers)
        if not prod.wait_for_subscriber(20):
            raise RuntimeError("the daemon did not subscribe to the feed")
        for r in ref:
            prod.publish(r.tobytes())
        st = d.wait_rows(model, len(ref), timeout=300)
        if st["phase"] != "monitoring":
            raise RuntimeError(f"not monitoring after {len(ref)} calibration rows: {st}")
        ranks = np.zeros((len(rows), len(targets)))
        ranks_order = np.zeros_like(ranks)
        t0 = time.time()
        for i, r in enumerate(rows):
            prod.publish(r.tobytes())
            d.wait_rows(model, len(ref) + i + 1, timeout=60)
            top = d.query({"op": "top", "model": model, "k": K, "window": "latest", "by": by}, timeout=30)
            if not top.get("ok"):
                raise RuntimeError(f"top failed: {top}")
            if top.get("window") not in (1, "latest"):
                raise RuntimeError(f"top answered for window {top.get('window')}, not the latest row")
            order = [e["filter"] for e in top["top"]]
            if len(order) != K:
                raise RuntimeError(f"top returned {len(order)} of {K} filters")
            score = {e["filter"]: float(e["score"]) for e in top["top"]}  # "inf" when p underflows to 0
            sc = np.array([score[f] for f in order])
            # ties pessimistic (as the offline evaluation): rank = how many filters score >= the target
            ranks[i] = [int((sc >= score[t]).sum()) for t in targets]
            pos = {f: j + 1 for j, f in enumerate(order)}
            ranks_order[i] = [pos[t] for t in targets]
        dt = time.time() - t0
        prod.close()
        if d.stop(timeout=60) != 0:
            raise RuntimeError("daemon did not exit cleanly: " + d.log_text()[-2000:])
        return ranks, ranks_order, dt
    finally:
        d.cleanup()


def offline_ctl(tails, by, ref_path, rows_path, schema_path, targets, K, stream=True):
    args = [str(ctl_bin()), "analyze", "--schema", str(schema_path), "--reference", str(ref_path),
            "--input", str(rows_path), "--top", str(K), "--tails", tails, "--by", by, "--json"]
    if stream:
        args.append("--stream")
    p = subprocess.run(args, capture_output=True, text=True, timeout=900, check=True)
    out = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    ranks = []
    for r in out:
        score = {e["filter"]: float(e["score"]) for e in r["top"]}
        sc = np.array(list(score.values()))
        ranks.append([int((sc >= score[t]).sum()) for t in targets])
    return np.array(ranks, float)


def offline_numpy(ref, rows, targets):
    """docs/results.md's POT lower tail (experiments/common.py, scored against the reference only)."""
    sys.path.insert(0, str(HERE))
    from common import POT, LowerTail, ranks_of
    keys = LowerTail(POT, ref).rank_keys(rows)
    keys = np.nan_to_num(keys, posinf=1e12)
    return ranks_of(keys, targets).astype(float)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400, help="faulty rows (first N of zeroed.npy)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--no-offline", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "docs" / "results" / "daemon_localization.json"))
    args = ap.parse_args()
    ref, rows, schema, targets = load()
    rows = rows[: args.rows]
    K = rows.shape[1]
    res = {"targets": targets, "rows": len(rows), "calibration": len(ref), "configs": {}, "offline": {}}
    with tempfile.TemporaryDirectory(prefix="dloc-") as tmp:
        rows_path = Path(tmp) / "rows.npy"
        np.save(rows_path, rows)
        for name in args.configs.split(","):
            tails, transform, by = CONFIGS[name]
            ranks, ranks_order, dt = run_daemon(tmp, tails, transform, by, ref, rows, schema, targets,
                                                name=name.replace("+", "_"))
            m = metrics(ranks)
            m["daemon_order"] = {k: v for k, v in metrics(ranks_order).items() if k in ("recall", "recall_ci", "mrr")}
            m.update({"tails": tails, "transform": transform, "by": by, "seconds": round(dt, 1)})
            res["configs"][name] = m
            print(f"daemon {name:14s} recall@20 {m['recall']:.3f} [{m['recall_ci'][0]:.3f}, {m['recall_ci'][1]:.3f}]"
                  f"  MRR {m['mrr']:.3f} [{m['mrr_ci'][0]:.3f}, {m['mrr_ci'][1]:.3f}]  per filter "
                  f"{[round(x, 2) for x in m['recall_per_filter']]}  ({dt:.0f} s)", flush=True)
            if not args.no_offline:
                for stream in (True, False):
                    label = f"{name} analyze{' --stream' if stream else ''}"
                    mo = metrics(offline_ctl(tails, by, FEED / "reference.npy", rows_path, FEED / "reference.schema.json",
                                             targets, K, stream=stream))
                    res["offline"][label] = mo
                    print(f"offline {label:30s} recall@20 {mo['recall']:.3f} [{mo['recall_ci'][0]:.3f}, "
                          f"{mo['recall_ci'][1]:.3f}]  MRR {mo['mrr']:.3f}", flush=True)
        if not args.no_offline:
            mo = metrics(offline_numpy(ref.astype(np.float64), rows.astype(np.float64), targets))
            res["offline"]["numpy LowerTail(POT) (results.md)"] = mo
            print(f"offline numpy LowerTail(POT)           recall@20 {mo['recall']:.3f} [{mo['recall_ci'][0]:.3f}, "
                  f"{mo['recall_ci'][1]:.3f}]  MRR {mo['mrr']:.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
        print("wrote", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
