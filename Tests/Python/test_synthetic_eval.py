"""POT vs z-score on a small synthetic feed with differently-tailed layers (docs/method.md §6.4-5).

Regenerates a small feed (1000 reference rows, 100 shifted + 200 clean rows, 200 filters in 5
layers: lognormal, GPD 0.2-0.4, half-normal, exponential, gamma) with
experiments/make_synthetic_feed.py, runs `saliencyctl analyze`, and checks what holds in general
for this design, with margins (not tuned to one seed):

- planted filters (one per layer per row, each at survival 1e-5..1e-4 under its OWN law):
  POT recall@20 >= z-score recall@20, and POT >= 3x random;
- clean rows: POT's top-20 picks follow the layers' filter shares more closely (smaller total
  variation) than z-score's, which concentrate on the heavy-tailed layers;
- an independent numpy/scipy POT agrees with saliencyctl on the top-10 (mean Jaccard >= 0.8).

Binary: $SALIENCYCTL, default .build/debug/saliencyctl (CI builds debug; release works too).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import evaluate_synthetic as ev  # noqa: E402

CTL = os.environ.get("SALIENCYCTL", os.path.join(ROOT, ".build", "debug", "saliencyctl"))
SEEDS = (1, 2, 3)

pytestmark = pytest.mark.skipif(not os.access(CTL, os.X_OK),
                                reason="saliencyctl not built at %s (set SALIENCYCTL)" % CTL)


def make_feed(d, seed):
    subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "make_synthetic_feed.py"), "--out", str(d),
                    "--seed", str(seed), "--sizes", "16,32,48,64,40", "--reference", "1000",
                    "--clean", "200", "--shifted", "100", "--no-demo", "--p-min", "1e-4", "--p-max", "1e-3"], check=True, capture_output=True)
    return str(d)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = {}
    for seed in SEEDS:
        d = make_feed(tmp_path_factory.mktemp("feed%d" % seed), seed)
        # The scipy cross-check (one GPD fit per filter) is the slow part: one seed, few rows.
        out[seed] = ev.evaluate(CTL, d, check_rows=8 if seed == SEEDS[0] else 0)
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_pot_recovers_planted_at_least_as_well_as_zscore(results, seed):
    P, Z = results[seed]["planted", "pot"]["all"], results[seed]["planted", "zscore"]["all"]
    rnd = results[seed]["planted", "pot"]["random"]
    assert P["recall@20"] >= Z["recall@20"], (P, Z)
    # Seeds 1-4 gave POT 0.94-0.97 vs z-score 0.83-0.86 at k = 5 (500 pairs each).
    assert P["recall@5"] >= Z["recall@5"], (P, Z)
    assert P["recall@20"] >= 3 * rnd["recall@20"], (P, rnd)
    assert P["mrr"] >= 3 * rnd["mrr"], (P, rnd)


@pytest.mark.parametrize("seed", SEEDS)
def test_pot_finds_planted_in_every_layer(results, seed):
    # Equally rare values: POT should find them in each layer, light tails included, well above
    # random (k/K = 0.1). z-score is not held to this: it misses the light-tailed layers.
    P = results[seed]["planted", "pot"]
    for layer in ("conv_logn", "conv_gpd", "conv_half", "conv_exp", "conv_deep"):
        assert P[layer]["recall@20"] >= 0.5, (layer, P[layer])


@pytest.mark.parametrize("seed", SEEDS)
def test_clean_top20_follow_filter_shares_better_with_pot(results, seed):
    sp = results[seed]["shares", "pot", "clean"]
    sz = results[seed]["shares", "zscore", "clean"]
    assert sp["tv"] < sz["tv"], (sp, sz)
    # 200 rows x 20 picks: sampling noise of an unbiased picker is a few points of TV.
    assert sp["tv"] < 0.15, sp


def test_scipy_cross_check_agrees(results):
    for part, c in results[SEEDS[0]]["cross_check"].items():
        assert c["jaccard_mean"] >= 0.8, (part, c)
        assert c["spearman_mean"] >= 0.95, (part, c)
