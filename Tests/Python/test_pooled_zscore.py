"""The pooled z-score in the daemon and in `saliencyctl analyze` (issue 13; docs/statistics.md "Pooled z-score").

Rows look like Taylor blame (loss units shared by every filter, a point mass at 0): most filters vary, one
filter (QUIET) barely moves in calibration. A new row gives QUIET a small rise (huge per-filter z) and another
filter (BIG) a rise that is large in loss units. `--by pooled-zscore` must rank BIG first, `--by zscore` ranks
QUIET first; the scores equal numpy's (x - mu_j) / sqrt(mean_j var_j), over REP from a real daemon and from
`analyze`. A daemon that monitors transformed rows refuses pooled-zscore with an error that says why.
"""
import json
import subprocess

import numpy as np

from conftest import ctl_bin

MODEL = "blame"
LAYERS = [("conv1", 16), ("conv2", 24)]
K = 40
CAL = 1000
QUIET, BIG = 5, 30


def blame_rows(rng, n):
    scale = np.where(np.arange(K) < 16, 0.05, 0.4) * rng.uniform(0.5, 2.0, K)
    x = rng.gamma(0.8, 1.0, (n, K)) * scale
    x[rng.random((n, K)) < 0.4] = 0.0
    x[:, QUIET] = 0.01 + rng.normal(0, 1e-4, n)          # a filter that is quiet in calibration
    return x.astype(np.float32)


def new_row(rng):
    r = blame_rows(rng, 1)[0]
    r[QUIET] = 0.05          # +0.04: ~400 of its own sd, but small in loss units
    r[BIG] = 12.0            # far above anything in calibration, in loss units
    return r


def numpy_pooled(ref, row):
    ref = ref.astype(np.float64)
    return (row.astype(np.float64) - ref.mean(0)) / np.sqrt(ref.var(0, ddof=1).mean())


def ctl(*args):
    return subprocess.run([str(ctl_bin()), *args], capture_output=True, text=True, timeout=60)


def test_daemon_ranks_by_pooled_zscore_over_rep(saliencyd):
    d = saliencyd(calibration=CAL, config_sections={"pot": {"q": 1e-3}})
    rng = np.random.default_rng(20261202)
    cal = blame_rows(rng, CAL)
    prod = d.producer(MODEL, LAYERS)
    assert prod.wait_for_subscriber(20), "the daemon did not subscribe"
    for r in cal:
        prod.publish(r.tobytes())
    d.wait_rows(MODEL, CAL, timeout=120)
    assert d.model(MODEL)["phase"] == "monitoring"
    row = new_row(rng)
    prod.publish(row.tobytes())
    d.wait_rows(MODEL, CAL + 1, timeout=60)
    pooled = d.query({"op": "top", "model": MODEL, "k": 3, "by": "pooled-zscore"})
    assert pooled["by"] == "pooled-zscore" and pooled["top"][0]["filter"] == BIG, pooled
    want = numpy_pooled(cal, row)
    # The daemon's moments also hold the new row when it was not extreme; one row in 1001 moves mu and
    # sigma by well under 2%.
    got = pooled["top"][0]["score"]
    assert abs(got - want[BIG]) <= 0.02 * abs(want[BIG]), (got, want[BIG])
    assert [e["filter"] for e in pooled["top"]] == list(np.argsort(-want, kind="stable")[:3]), (pooled, np.argsort(-want)[:3])
    assert all(e.get("p") is None for e in pooled["top"]), pooled
    z = d.query({"op": "top", "model": MODEL, "k": 1, "by": "zscore"})
    assert z["top"][0]["filter"] == QUIET, z       # the per-filter z is dominated by the quiet filter
    out = ctl("top", "--model", MODEL, "--by", "pooled-zscore", "--k", "2", "--query", d.endpoints["query"])
    assert out.returncode == 0 and "pooled-zscore" in out.stdout and "conv2" in out.stdout, out.stdout + out.stderr


def test_a_transformed_daemon_refuses_pooled_zscore(saliencyd):
    d = saliencyd(calibration=CAL, config_sections={"pot": {"transform": "layer-logres", "q": 1e-3}})
    rng = np.random.default_rng(5)
    prod = d.producer(MODEL, LAYERS)
    assert prod.wait_for_subscriber(20)
    for r in blame_rows(rng, CAL) + 1e-3:
        prod.publish(r.astype(np.float32).tobytes())
    d.wait_rows(MODEL, CAL, timeout=120)
    err = d.query({"op": "top", "model": MODEL, "k": 3, "by": "pooled-zscore"})
    assert err.get("ok") is False and err["error"]["code"] == "bad_request", err
    msg = err["error"]["message"]
    assert "pooled-zscore ranks raw rows only" in msg and "layer-logres" in msg and "analyze --by pooled-zscore" in msg, msg


def test_analyze_by_pooled_zscore_equals_numpy(tmp_path):
    rng = np.random.default_rng(11)
    ref = blame_rows(rng, 600)
    x = np.stack([new_row(rng), blame_rows(rng, 1)[0]])
    np.save(tmp_path / "ref.npy", ref)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "schema.json").write_text(json.dumps({"model": MODEL, "layers": [{"name": n, "filters": f} for n, f in LAYERS]}))
    out = ctl("analyze", "--schema", str(tmp_path / "schema.json"), "--reference", str(tmp_path / "ref.npy"),
              "--input", str(tmp_path / "x.npy"), "--by", "pooled-zscore", "--top", str(K), "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(l) for l in out.stdout.splitlines()]
    for r, got in zip(x, rows):
        want = numpy_pooled(ref, r)
        assert [e["filter"] for e in got["top"]] == list(np.argsort(-want, kind="stable")), got
        for e in got["top"]:
            assert abs(e["score"] - want[e["filter"]]) <= 1e-6 * max(1.0, abs(want[e["filter"]])), (e, want[e["filter"]])
    assert rows[0]["top"][0]["filter"] == BIG
    help_text = ctl("analyze", "--help").stdout + ctl("top", "--help").stdout
    assert help_text.count("pooled-zscore") >= 2
