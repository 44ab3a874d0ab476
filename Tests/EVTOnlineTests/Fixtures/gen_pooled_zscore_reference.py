#!/usr/bin/env python3
"""Generate Tests/EVTOnlineTests/Fixtures/pooled_zscore_reference.json: golden data for the pooled
z-score (Sources/EVTOnline/FilterBank+PooledZ.swift; docs/statistics.md, "Pooled z-score").

    python3 Tests/EVTOnlineTests/Fixtures/gen_pooled_zscore_reference.py

Independent numpy implementation, float64, of the definition, per filter j of the K filters:
    mu_j      = mean of filter j's reference values
    var_j     = their variance, ddof = 1
    sigma     = sqrt(mean over all K filters of var_i), replaced by 1 when below 1e-14
    z_j(v)    = (v - mu_j) / sigma
Rows look like Taylor blame (non-negative, a point mass at 0 from the clipping, scales that differ by
layer and by filter): a gamma body times a per-filter scale, zeroed with a per-filter probability. One
filter is always 0 and the last layer is constant (variance 0, still pooled). A second, all-constant
bank checks sigma = 0 -> 1. Inputs are float32 (what the daemon receives); the statistics are computed
in float64 from them.
"""
import json
import os

import numpy as np

SEED = 20261204
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pooled_zscore_reference.json")
WIDTHS = [1, 5, 16, 33, 3]          # a width-1 layer, widths that are not multiples of 8, a constant layer last
N_REF = 300
N_NEW = 8


def main():
    rng = np.random.default_rng(SEED)
    k = sum(WIDTHS)
    offsets = np.concatenate([[0], np.cumsum(WIDTHS)])
    layer_scale = np.repeat([0.02, 0.1, 0.5, 2.0, 1.0], WIDTHS)
    filt_scale = layer_scale * rng.lognormal(0, 1.0, k)
    p_zero = rng.uniform(0.1, 0.7, k)

    def rows(n, boost=1.0):
        x = rng.gamma(0.7, 1.0, (n, k)) * filt_scale * boost
        x[rng.random((n, k)) < p_zero] = 0.0
        x[:, 7] = 0.0                                  # a filter that is always 0
        x[:, offsets[-2]:] = 0.25                      # the last layer is constant
        return x.astype(np.float32)

    ref = rows(N_REF)
    new = rows(N_NEW, boost=3.0)
    new[0, 20] = 50.0                                  # one filter far above its layer
    r = ref.astype(np.float64)
    mu = r.mean(0)
    sigma = float(np.sqrt(r.var(0, ddof=1).mean()))
    assert sigma >= 1e-14
    z = (new.astype(np.float64) - mu) / sigma
    assert np.all(np.isfinite(z))
    const = np.full((200, 4), 0.5, np.float32)
    const_new = np.array([[0.5, 1.5, 0.0, 0.25]], np.float32)
    with open(OUT, "w") as f:
        json.dump({"generator": os.path.basename(__file__), "seed": SEED, "numpy": np.__version__,
                   "widths": WIDTHS, "reference": ref.tolist(), "new_rows": new.tolist(),
                   "mean": mu.tolist(), "pooled_sd": sigma, "z": z.tolist(),
                   "constant": {"reference": const.tolist(), "new_rows": const_new.tolist(),
                                "z": (const_new.astype(np.float64) - 0.5).tolist()}}, f)
    print(f"wrote {OUT}: K = {k}, {N_REF} reference rows, {N_NEW} new rows; pooled sd {sigma:.6f}")


if __name__ == "__main__":
    main()
