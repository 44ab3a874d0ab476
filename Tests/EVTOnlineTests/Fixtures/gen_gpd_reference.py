#!/usr/bin/env python3
"""Generate Tests/EVTOnlineTests/Fixtures/gpd_reference.json, the scipy golden data for
EVTOnline's GPD, Grimshaw fit and SPOT threshold (docs/statistics.md).

    python3 Tests/EVTOnlineTests/Fixtures/gen_gpd_reference.py

Deterministic: one numpy Generator with a fixed seed. Contents:
  fits         GPD samples for shapes {-0.3,-0.2,-0.1,0,0.1,0.25,0.5} x scales {1e-3, 1} x sizes
               {60, 600}, with scipy.stats.genpareto.fit(y, floc=0) and scipy's log-likelihood
               (sum of genpareto.logpdf at the scipy fit).
  closed_form  sf / logsf / logpdf at points inside the support, ppf(1 - p) at survival p.
  quantiles    a sample and numpy.quantile(sample, level) with the default "linear" method.
  censored     GPD samples whose values above the 0.95 quantile are right-censored there, with
               genpareto.fit(CensoredData(uncensored=y, right=c), floc=0) and the censored
               log-likelihood at scipy's fit (sum of logpdf over y plus sum of logsf over c).
"""
import json
import os

import numpy as np
import scipy
from scipy import stats
from scipy.stats import genpareto

SEED = 20250501
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpd_reference.json")


def main():
    rng = np.random.default_rng(SEED)
    fits = []
    for shape in [-0.3, -0.2, -0.1, 0.0, 0.1, 0.25, 0.5]:
        for scale in [1e-3, 1.0]:
            for size in [60, 600]:
                y = genpareto.rvs(shape, loc=0, scale=scale, size=size, random_state=rng)
                c, loc, s = genpareto.fit(y, floc=0)
                ll = float(np.sum(genpareto.logpdf(y, c, loc=0, scale=s)))
                fits.append({"shape": shape, "scale": scale, "size": size,
                             "peaks": [float(v) for v in y],
                             "scipy_shape": float(c), "scipy_scale": float(s), "scipy_loglik": ll})

    closed = []
    for shape in [-0.3, -0.1, 0.0, 1e-9, 0.25, 0.5]:
        for scale in [1e-3, 1.0]:
            ys = [scale * f for f in [1e-8, 0.01, 0.1, 1.0, 2.5, 3.0, 10.0]]
            if shape < 0:
                ys = [v for v in ys if v < scale / -shape]
            points = [{"y": v,
                       "sf": float(genpareto.sf(v, shape, scale=scale)),
                       "logsf": float(genpareto.logsf(v, shape, scale=scale)),
                       "logpdf": float(genpareto.logpdf(v, shape, scale=scale))} for v in ys]
            qs = [{"p": p, "y": float(genpareto.isf(p, shape, scale=scale))}
                  for p in [0.9, 0.5, 0.1, 1e-3, 1e-6]]
            closed.append({"shape": shape, "scale": scale, "points": points, "quantiles": qs})

    sample = rng.standard_exponential(1001)
    quantiles = {"sample": [float(v) for v in sample],
                 "levels": [0.5, 0.9, 0.98, 0.999],
                 "values": [float(np.quantile(sample, lv)) for lv in [0.5, 0.9, 0.98, 0.999]]}

    censored = []
    for shape in [-0.2, 0.0, 0.3]:
        for size in [200, 1000]:
            x = genpareto.rvs(shape, loc=0, scale=1.0, size=size, random_state=rng)
            cut = float(genpareto.isf(0.05, shape, scale=1.0))
            y = x[x <= cut]
            c = np.full(int(np.sum(x > cut)), cut)
            data = stats.CensoredData(uncensored=y, right=c)
            g, loc, sc = genpareto.fit(data, floc=0)
            ll = float(np.sum(genpareto.logpdf(y, g, scale=sc)) + np.sum(genpareto.logsf(c, g, scale=sc)))
            censored.append({"shape": shape, "size": size, "peaks": [float(v) for v in y],
                             "censored": [float(v) for v in c],
                             "scipy_shape": float(g), "scipy_scale": float(sc), "scipy_loglik": ll})

    doc = {"generator": "Tests/EVTOnlineTests/Fixtures/gen_gpd_reference.py", "seed": SEED,
           "numpy": np.__version__, "scipy": scipy.__version__,
           "fits": fits, "closed_form": closed, "quantiles": quantiles, "censored": censored}
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}: {len(fits)} fits, {len(closed)} closed-form sets")


if __name__ == "__main__":
    main()
