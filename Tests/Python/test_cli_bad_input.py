"""saliencyctl refuses bad input with a clear error and an exit status, and counts rejected rows."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CTL = Path(os.environ.get("SALIENCYCTL", ROOT / ".build/debug/saliencyctl"))


def run(*args):
    return subprocess.run([str(CTL), *map(str, args)], capture_output=True, text=True)


def test_series_commands_refuse_nan_inf_and_negatives(tmp_path):
    (tmp_path / "neg.txt").write_text("1\n2\n-3\n")
    (tmp_path / "nan.txt").write_text("1\nnan\n")
    np.save(tmp_path / "inf.npy", np.array([1.0, np.inf], dtype=np.float32))
    r = run("fit", tmp_path / "neg.txt")
    assert r.returncode == 1 and "value 2 is -3.0" in r.stderr and "negative" in r.stderr
    r = run("spot", tmp_path / "nan.txt", "--init", 1, "--q", 0.01)
    assert r.returncode == 1 and "non_finite" in r.stderr
    r = run("fit", tmp_path / "inf.npy")
    assert r.returncode == 1 and "non_finite" in r.stderr
    r = run("fit", tmp_path / "neg.txt", "--allow-negative", "--threshold", 0, "--min-peaks", 1, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["peaks"] == 2
    (tmp_path / "junk.txt").write_text("1\nabc\n")
    r = run("fit", tmp_path / "junk.txt")
    assert r.returncode == 1 and "line 2" in r.stderr
    (tmp_path / "not.npy").write_bytes(b"\x93NUMPY garbage")
    r = run("fit", tmp_path / "not.npy")
    assert r.returncode == 1 and "npy" in r.stderr.lower()


def test_analyze_rejects_and_counts_bad_rows(tmp_path):
    rng = np.random.default_rng(0)
    schema = {"model": "m", "layers": [{"name": "a", "filters": 4}, {"name": "b", "filters": 6}]}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    np.save(tmp_path / "ref.npy", np.exp(rng.standard_normal((200, 10))).astype(np.float32))
    x = np.exp(rng.standard_normal((5, 10))).astype(np.float32)
    x[1, 3] = np.nan
    x[3, 0] = -1
    np.save(tmp_path / "x.npy", x)
    r = run("analyze", "--schema", tmp_path / "s.json", "--reference", tmp_path / "ref.npy", "--input", tmp_path / "x.npy", "--json", "--top", 3)
    assert r.returncode == 3
    rows = [json.loads(l)["row"] for l in r.stdout.splitlines()]
    assert rows == [0, 2, 4]
    assert "row 1 rejected: non_finite" in r.stderr and "row 3 rejected: negative" in r.stderr
    assert "2 of 5 rows rejected" in r.stderr
    np.save(tmp_path / "wide.npy", np.ones((2, 11), dtype=np.float32))
    r = run("analyze", "--schema", tmp_path / "s.json", "--reference", tmp_path / "ref.npy", "--input", tmp_path / "wide.npy")
    assert r.returncode == 1 and "11 columns" in r.stderr and "10 filters" in r.stderr
    bad_ref = np.exp(rng.standard_normal((200, 10))).astype(np.float32)
    bad_ref[7, 2] = np.inf
    np.save(tmp_path / "badref.npy", bad_ref)
    r = run("analyze", "--schema", tmp_path / "s.json", "--reference", tmp_path / "badref.npy", "--input", tmp_path / "x.npy")
    assert r.returncode == 1 and "reference row 7" in r.stderr
