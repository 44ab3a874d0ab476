"""The same figures through the daemon (replay → top) and offline (saliencyctl analyze) agree.

The bundled Fashion-MNIST CNN feed: the daemon calibrates on the 1000 reference rows, then receives
shifted rows one at a time; after each, its `top` (latest prediction) must equal `analyze --stream`
on the same rows (which absorbs each row before scoring it, exactly as the daemon does).
"""
import json
import subprocess
import time

import numpy as np

from saliency_tap import Publisher, QueryClient

from conftest import ROOT, ctl_bin

CTL = ctl_bin()
FEED = ROOT / "data/feeds/fmnist"


def test_daemon_top_equals_offline_analyze(saliencyd, tmp_path):
    schema = json.loads((FEED / "reference.schema.json").read_text())
    ref = np.load(FEED / "reference.npy")
    shifted = np.load(FEED / "shifted.npy")[:12]
    np.save(tmp_path / "input.npy", shifted)
    for by in ("pot", "zscore"):
        out = subprocess.run([str(CTL), "analyze", "--schema", str(FEED / "reference.schema.json"), "--reference", str(FEED / "reference.npy"),
                              "--input", str(tmp_path / "input.npy"), "--by", by, "--top", "10", "--stream", "--json"],
                             capture_output=True, text=True, check=True)
        offline = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(offline) == len(shifted)

        d = saliencyd(start=False, name=by, state_dir=tmp_path / f"state-{by}", calibration=len(ref))
        ep = d.endpoints
        d.start(wait=False)
        try:
            q = QueryClient(ep["query"], timeout=2.0)
            pub = Publisher(ep["feed"], schema["model"], schema)
            assert pub.wait_for_subscriber(20.0)
            for row in ref:
                pub.publish(row, target_kind=1)

            def wait_rows(n):
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        ms = q.status()["models"]
                        if ms and ms[0]["rows"] >= n:
                            return
                    except Exception:
                        pass
                    time.sleep(0.05)
                raise AssertionError(f"daemon did not reach {n} rows")

            wait_rows(len(ref))
            for i, row in enumerate(shifted):
                pub.publish(row, target_kind=1)
                wait_rows(len(ref) + i + 1)
                online = q.top(schema["model"], k=10, by=by)["top"]
                assert [e["filter"] for e in online] == [e["filter"] for e in offline[i]["top"]], f"row {i} ({by})"
                for a, b in zip(online, offline[i]["top"]):
                    assert a["layer"] == b["layer"] and a["channel"] == b["channel"]
                    assert abs(a["score"] - b["score"]) <= 1e-9 * max(1.0, abs(b["score"])), (a, b)
            pub.close()
            q.close()
        finally:
            assert d.stop(timeout=60) == 0
