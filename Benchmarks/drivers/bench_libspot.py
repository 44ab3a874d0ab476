#!/usr/bin/env python3
"""Side-by-side: libspot (PyPI, C core, one Spot detector per filter) vs saliencyd's FilterBank
on the SAME data.

Data: numpy, seeded: filter j draws scale_j * exp(0.6 * N(0,1)), scale_j ~ U(0.5, 1.5) (the family
of `saliencyctl bench`; numpy's generator, so not bit-identical to the Swift SplitMix64 stream, but
both sides below read the very same .npy). Rows [0, calibration) calibrate, the rest are monitored.

libspot: Spot(q, level, max_excess) per filter; fit() on the filter's calibration column, then
step() every value of each row, for as many rows as fit in --seconds. libspot refits its GPD on
every excess; FilterBank refits after 32 new peaks with a budget of 0.25 refits/row (and its GPD
fitter is still a stand-in, see BENCHMARKS.md), so the two do different amounts of fitting.

Swift: Benchmarks/BankProfile `npy` mode (release build) reads the .npy, calibrates a FilterBank
on the first rows and times `update` (validation included) on the rest.

Usage: Benchmarks/drivers/bench_libspot.py [--filters K ...] [--level L] [--seconds S] [--json OUT]
"""
import argparse, json, os, subprocess, sys, tempfile, time

import numpy as np
import libspot

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BANKPROFILE = os.path.join(ROOT, "Benchmarks", ".build", "release", "BankProfile")


def make_data(k, rows, seed):
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.5, 1.5, size=k)
    x = scales[None, :] * np.exp(0.6 * rng.standard_normal((rows, k)))
    return np.ascontiguousarray(x.astype("<f4"))


def run_libspot(data, calibration, level, q, max_excess, seconds):
    k = data.shape[1]
    t0 = time.perf_counter()
    spots = []
    for j in range(k):
        s = libspot.Spot(q=q, level=level, max_excess=max_excess)
        s.fit(data[:calibration, j].astype(np.float64))
        spots.append(s)
    fit_s = time.perf_counter() - t0
    excess = anomalies = 0
    rows = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    for r in range(calibration, data.shape[0]):
        row = data[r].tolist()
        for s, v in zip(spots, row):
            out = s.step(v)
            if out == 2:
                anomalies += 1
            elif out == 1:
                excess += 1
        rows += 1
        if time.perf_counter() > deadline:
            break
    el = time.perf_counter() - t0
    return dict(rows=rows, seconds=el, rows_per_second=rows / el, extremes=anomalies, peaks=excess,
                calibration_fit_seconds=fit_s)


def run_swift(path, calibration, level):
    out = subprocess.run([BANKPROFILE, "npy", path, str(calibration), str(level)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filters", type=int, nargs="+", default=[26560, 500])
    ap.add_argument("--level", type=float, default=0.98, help="libspot's default; FilterBank's is 0.90")
    ap.add_argument("--q", type=float, default=1e-4)
    ap.add_argument("--calibration", type=int, default=1000)
    ap.add_argument("--max-excess", type=int, default=256, help="= FilterBank maxPeaks")
    ap.add_argument("--seconds", type=float, default=20.0, help="libspot time budget per K")
    ap.add_argument("--swift-rows", type=int, default=None, help="monitored rows for the Swift rate run")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if not os.path.exists(BANKPROFILE):
        sys.exit(f"{BANKPROFILE} missing: run (cd Benchmarks && swift build -c release --product BankProfile)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in a.filters:
            swift_rows = a.swift_rows or max(1000, min(20000, 80_000_000 // k))
            data = make_data(k, a.calibration + swift_rows, a.seed)
            full = os.path.join(tmp, f"sal_{k}.npy")
            np.save(full, data)
            ls = run_libspot(data, a.calibration, a.level, a.q, a.max_excess, a.seconds)
            # Same rows libspot did (sanity: extremes), then the full set (rate).
            same = os.path.join(tmp, f"sal_{k}_same.npy")
            np.save(same, data[: a.calibration + ls["rows"]])
            sw_same = run_swift(same, a.calibration, a.level)
            sw = run_swift(full, a.calibration, a.level)
            r = dict(filters=k, level=a.level, q=a.q, libspot=ls, swift_same_rows=sw_same, swift=sw,
                     ratio_rows_per_second=sw["rows_per_second_wall"] / ls["rows_per_second"])
            results.append(r)
            print(f"K={k} level={a.level}: libspot {ls['rows_per_second']:.2f} rows/s over {ls['rows']} rows "
                  f"(extremes {ls['extremes']}, excesses {ls['peaks']}); FilterBank {sw['rows_per_second_wall']:.0f} rows/s "
                  f"wall ({sw['rows_per_second_cpu']:.0f} CPU) over {sw['rows']} rows; ratio {r['ratio_rows_per_second']:.0f}x; "
                  f"same {ls['rows']} rows: FilterBank extremes {sw_same['extremes']}, peaks {sw_same['peaks']}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
