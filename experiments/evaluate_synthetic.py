#!/usr/bin/env python3
"""POT vs z-score on the synthetic feed of make_synthetic_feed.py (docs/method.md §6.4-5).

Runs `saliencyctl analyze --by pot|zscore` (reference = reference.npy) on shifted.npy and
clean.npy, ranking ALL filters of every row, and computes:

- recall@k (k = 5, 10, 20) and mean reciprocal rank of the planted filters, per layer and
  overall, for POT, z-score and a uniformly random ranking (exact: P(rank ≤ k) = k/K,
  E[1/rank] = H_K/K);
- the share of top-20 picks per layer on clean (and shifted) rows beside each layer's share of
  filters, with the total-variation distance TV = ½ Σ |pick share − filter share|;
- an independent numpy/scipy POT score (np.quantile threshold, scipy.stats.genpareto.fit with
  floc=0, p = (N_t/n)·sf(s − t), s ≤ t ranked below every above-threshold filter by the
  empirical survival) on a subset of rows: Jaccard of its top-10 with saliencyctl's and the
  Spearman correlation of the two scores over the filters above their threshold.

Writes docs/synthetic.md (unless --no-doc) and, with matplotlib, docs/results/synthetic_shares.png.
The functions are reused by Tests/Python/test_synthetic_eval.py.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from scipy import stats

KS = (5, 10, 20)


# ---------------------------------------------------------------------------- saliencyctl

def analyze(ctl, schema, reference, inp, by, top, level=0.90):
    """Runs saliencyctl analyze; returns (ranks [rows, top] global filter indices, scores)."""
    cmd = [ctl, "analyze", "--schema", schema, "--reference", reference, "--input", inp,
           "--by", by, "--level", repr(level), "--top", str(top), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    rows.sort(key=lambda r: r["row"])
    ranks = np.array([[e["filter"] for e in r["top"]] for r in rows], dtype=np.int64)
    scores = np.array([[e["score"] for e in r["top"]] for r in rows], dtype=np.float64)
    return ranks, scores, cmd


def rank_positions(ranks, K):
    """pos[r, j] = 1-based rank of filter j in row r (ranks must list all K filters)."""
    pos = np.empty((ranks.shape[0], K), dtype=np.int64)
    rows = np.arange(ranks.shape[0])[:, None]
    pos[rows, ranks] = np.arange(1, ranks.shape[1] + 1)[None, :]
    return pos


# ---------------------------------------------------------------------------- metrics

def layer_of(schema):
    owner = []
    for i, l in enumerate(schema["layers"]):
        owner += [i] * l["filters"]
    return np.array(owner)


def planted_metrics(pos, planted, schema):
    """recall@k and MRR of planted (row, filter) pairs, per layer and overall."""
    names = [l["name"] for l in schema["layers"]]
    K = sum(l["filters"] for l in schema["layers"])
    by_layer = {n: [] for n in names}
    for r in planted["rows"]:
        for e in r["planted"]:
            by_layer[e["layer"]].append(pos[r["row"], e["filter"]])
    out = {}
    every = []
    for n in names + ["all"]:
        rk = np.array(every if n == "all" else by_layer[n], dtype=float)
        if n != "all":
            every += by_layer[n]
        if rk.size == 0:
            continue
        d = {"pairs": int(rk.size), "mrr": float(np.mean(1 / rk)), "median_rank": float(np.median(rk))}
        for k in KS:
            d["recall@%d" % k] = float(np.mean(rk <= k))
        out[n] = d
    rand = {"mrr": float(np.sum(1 / np.arange(1, K + 1)) / K)}
    for k in KS:
        rand["recall@%d" % k] = k / K
    out["random"] = rand
    # Ceiling: the m planted filters of a row occupy ranks 1..m (MRR over pairs = H_m/m < 1).
    ideal = [np.arange(1, len(r["planted"]) + 1) for r in planted["rows"] if r["planted"]]
    ideal = np.concatenate(ideal).astype(float)
    out["ideal"] = {"mrr": float(np.mean(1 / ideal)), **{"recall@%d" % k: float(np.mean(ideal <= k)) for k in KS}}
    return out


def top_shares(ranks, schema, k=20):
    """Share of the top-k picks per layer, filter shares, and TV distance."""
    owner = layer_of(schema)
    K = owner.size
    counts = np.bincount(owner[ranks[:, :k]].ravel(), minlength=len(schema["layers"]))
    share = counts / counts.sum()
    fshare = np.array([l["filters"] for l in schema["layers"]]) / K
    return {"share": share.tolist(), "filter_share": fshare.tolist(), "tv": float(0.5 * np.abs(share - fshare).sum())}


# ---------------------------------------------------------------------------- scipy POT

class ScipyPOT:
    """Independent reference implementation of the POT score (docs/method.md §2)."""

    def __init__(self, ref, level=0.90, min_peaks=10):
        ref = np.asarray(ref, dtype=np.float64)
        self.n = ref.shape[0]
        self.t = np.quantile(ref, level, axis=0)  # numpy 'linear'
        self.sorted = np.sort(ref, axis=0)
        K = ref.shape[1]
        self.shape = np.full(K, np.nan)
        self.scale = np.full(K, np.nan)
        self.nt = np.zeros(K)
        for j in range(K):
            peaks = ref[ref[:, j] > self.t[j], j] - self.t[j]
            self.nt[j] = peaks.size
            if peaks.size >= min_peaks:
                c, _, s = stats.genpareto.fit(peaks, floc=0)
                self.shape[j], self.scale[j] = c, s

    def scores(self, row):
        """−log10 p above the threshold; below it −1 − (empirical survival), so it ranks last."""
        row = np.asarray(row, dtype=np.float64)
        out = np.empty(row.size)
        above = row > self.t
        for j in np.flatnonzero(above):
            p = self.nt[j] / self.n * stats.genpareto.sf(row[j] - self.t[j], self.shape[j], scale=self.scale[j])
            out[j] = np.inf if p <= 0 else -np.log10(p)
        for j in np.flatnonzero(~above):
            surv = 1 - np.searchsorted(self.sorted[:, j], row[j], side="right") / self.n
            out[j] = -1 - surv
        return out, above


def cross_check(ref, X, swift_ranks, swift_scores, rows, level=0.90, top=10):
    """Jaccard of top-`top` and Spearman over above-threshold filters, scipy vs saliencyctl."""
    ref_pot = ScipyPOT(ref, level)
    jac, rho = [], []
    K = X.shape[1]
    for r in rows:
        s, above = ref_pot.scores(X[r])
        order = np.lexsort((np.arange(K), -s))  # score desc, index asc
        a, b = set(order[:top].tolist()), set(swift_ranks[r, :top].tolist())
        jac.append(len(a & b) / len(a | b))
        sw = np.empty(K)
        sw[swift_ranks[r]] = swift_scores[r]
        fin = above & np.isfinite(s) & np.isfinite(sw)
        if fin.sum() > 2:
            rho.append(stats.spearmanr(s[fin], sw[fin]).statistic)
    return {"rows": len(list(rows)), "jaccard_mean": float(np.mean(jac)), "jaccard_min": float(np.min(jac)),
            "spearman_mean": float(np.mean(rho)), "spearman_min": float(np.min(rho)), "pot": ref_pot}


# ---------------------------------------------------------------------------- whole evaluation

def evaluate(ctl, feed_dir, level=0.90, check_rows=40, seed=0):
    f = lambda n: os.path.join(feed_dir, n)
    schema = json.load(open(f("schema.json")))
    planted = json.load(open(f("planted.json")))
    K = sum(l["filters"] for l in schema["layers"])
    res = {"K": K, "schema": schema, "commands": [], "timing": {}}
    ranks = {}
    for by in ("pot", "zscore"):
        for part in ("shifted", "clean"):
            t0 = time.time()
            rk, sc, cmd = analyze(ctl, f("schema.json"), f("reference.npy"), f(part + ".npy"), by, K, level)
            res["timing"]["%s/%s" % (by, part)] = time.time() - t0
            ranks[by, part] = (rk, sc)
            res["commands"].append(" ".join(cmd))
    for by in ("pot", "zscore"):
        pos = rank_positions(ranks[by, "shifted"][0], K)
        res["planted", by] = planted_metrics(pos, planted, schema)
        for part in ("clean", "shifted"):
            res["shares", by, part] = top_shares(ranks[by, part][0], schema)
    if check_rows:
        ref = np.load(f("reference.npy"))
        rng = np.random.default_rng(seed)
        out = {}
        for part in ("shifted", "clean"):
            X = np.load(f(part + ".npy"))
            rows = sorted(rng.choice(X.shape[0], min(check_rows, X.shape[0]), replace=False).tolist())
            t0 = time.time()
            rk, sc = ranks["pot", part]
            out[part] = cross_check(ref, X, rk, sc, rows, level)
            res["timing"]["scipy/" + part] = time.time() - t0
        res["cross_check"] = out
    return res


# ---------------------------------------------------------------------------- report

def fmt(x, d=3):
    return ("%." + str(d) + "f") % x


def markdown_header(res, runs):
    names = [l["name"] for l in res["schema"]["layers"]]
    fam = {l["name"]: l["family"] for l in res["schema"]["families"]}
    sizes = {l["name"]: l["filters"] for l in res["schema"]["layers"]}
    L = []
    w = L.append
    w("# Synthetic feed: POT vs z-score when layers have different tail shapes\n")
    w("Generated by `experiments/evaluate_synthetic.py` (do not edit by hand; rerun it). Method: docs/method.md "
      "§2 (the two scores) and §6.4–6.5 (recall of planted filters, depth bias).\n")
    w("## Data\n")
    w("`experiments/make_synthetic_feed.py` draws i.i.d. values per filter from its layer's family, with "
      "per-filter scale (lognormal spread 0.5) and, where the family has one, per-filter shape. Planted "
      "filters in the shifted rows take the value whose survival probability under the filter's own law is "
      "p ~ log-uniform[p_min, p_max] (exact `scipy.stats` `isf`): **equally rare in every layer**. Each shifted "
      "row has one planted filter per layer (5 per row), drawn from a per-layer pool of 4. Reference 2000 rows, "
      "clean 500, shifted 500; values are float32. Rows are independent and filters within a row are "
      "independent: there is no per-row gradient-size factor (docs/method.md §7), which real CNNs have.\n")
    w("| layer | family (per-filter parameters) | filters | share |")
    w("|---|---|---:|---:|")
    desc = {"lognormal": "lognormal, σ 0.6–1.0", "gpd": "generalized Pareto, shape 0.2–0.4",
            "halfnormal": "half-normal", "exponential": "exponential", "gamma": "gamma, shape 20–40 (CV 0.16–0.22)"}
    for n in names:
        w("| %s | %s | %d | %.3f |" % (n, desc.get(fam[n], fam[n]), sizes[n], sizes[n] / res["K"]))
    w("\nCommands (release build; ~%d s per feed on the shared 2-core machine):\n" % max(1, round(sum(r["timing"].get(k, 0) for r in runs for k in r["timing"]) / len(runs))))
    w("```sh")
    w("swift build -c release --product saliencyctl")
    for r in runs:
        w(r["gen_cmd"])
    w("python3 experiments/evaluate_synthetic.py --saliencyctl .build/release/saliencyctl " + " ".join("--feed " + r["feed"] for r in runs))
    w("# which runs, for BY in pot zscore and PART in shifted clean:")
    w("#   " + res["commands"][0].replace("--by pot", "--by $BY").replace("shifted.npy", "$PART.npy"))
    w("```\n")
    return L


def markdown_feed(res, title):
    names = [l["name"] for l in res["schema"]["layers"]]
    L = []
    w = L.append
    w("## %s\n" % title)
    w("### Recovery of planted filters (shifted rows, full ranking of all %d filters)\n" % res["K"])
    w("Each planted (row, filter) pair counts once; recall@k = share of pairs ranked ≤ k in their row; "
      "MRR = mean of 1/rank over pairs. Random = exact expectation for a uniform ranking (k/K, H_K/K).\n")
    w("| layer | pairs | POT r@5 | z r@5 | POT r@10 | z r@10 | POT r@20 | z r@20 | POT MRR | z MRR | POT median rank | z median rank |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    P, Z = res["planted", "pot"], res["planted", "zscore"]
    for n in names + ["all"]:
        p, z = P[n], Z[n]
        w("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %g | %g |" % (
            "**all**" if n == "all" else n, p["pairs"], fmt(p["recall@5"]), fmt(z["recall@5"]), fmt(p["recall@10"]),
            fmt(z["recall@10"]), fmt(p["recall@20"]), fmt(z["recall@20"]), fmt(p["mrr"]), fmt(z["mrr"]),
            p["median_rank"], z["median_rank"]))
    R = P["random"]
    w("| random | | %s | | %s | | %s | | %s | | | |" % (fmt(R["recall@5"]), fmt(R["recall@10"]), fmt(R["recall@20"]), fmt(R["mrr"])))
    I = P["ideal"]
    w("| ideal (planted = ranks 1..5) | | %s | | %s | | %s | | %s | | | |\n" % (fmt(I["recall@5"]), fmt(I["recall@10"]), fmt(I["recall@20"]), fmt(I["mrr"])))
    w("### Where the top-20 picks come from\n")
    for part, what in (("clean", "clean rows (no planted filter): an unbiased score picks each layer in proportion to its filters"),
                       ("shifted", "shifted rows (planted filters included)")):
        w("Share of top-20 picks per layer, %s. TV = ½ Σ |pick share − filter share|.\n" % what)
        w("| layer | filter share | POT | z-score |")
        w("|---|---:|---:|---:|")
        sp, sz = res["shares", "pot", part], res["shares", "zscore", part]
        for i, n in enumerate(names):
            w("| %s | %.3f | %.3f | %.3f |" % (n, sp["filter_share"][i], sp["share"][i], sz["share"][i]))
        w("| **TV distance** | 0 | **%.3f** | **%.3f** |\n" % (sp["tv"], sz["tv"]))
    if "cross_check" in res:
        w("### Cross-check: saliencyctl POT vs an independent numpy/scipy POT\n")
        w("Threshold `np.quantile(ref, 0.9, axis=0)`, peaks above it, `scipy.stats.genpareto.fit(peaks, floc=0)`, "
          "p = (N_t/n)·sf(s − t); values at or below the threshold rank below every value above it. Same "
          "reference file; rows drawn at random (seed 0).\n")
        w("| rows | n | mean Jaccard top-10 | min Jaccard | mean Spearman (above-threshold scores) | min Spearman |")
        w("|---|---:|---:|---:|---:|---:|")
        for part, c in res["cross_check"].items():
            w("| %s | %d | %.3f | %.3f | %.4f | %.4f |" % (part, c["rows"], c["jaccard_mean"], c["jaccard_min"],
                                                          c["spearman_mean"], c["spearman_min"]))
        w("")
        if "fit_check" in res:
            w("GPD fits of one filter per layer, `saliencyctl fit --json` (Grimshaw) vs `scipy.stats.genpareto.fit(floc=0)`:\n")
            w("| layer | filter | peaks | shape saliencyctl | shape scipy | loglik saliencyctl | loglik scipy |")
            w("|---|---:|---:|---:|---:|---:|---:|")
            for e in res["fit_check"]:
                w("| %s | %d | %d | %.4f | %.4f | %.3f | %.3f |" % (e["layer"], e["filter"], e["peaks"], e["shape_ctl"],
                                                                  e["shape_scipy"], e["loglik_ctl"], e["loglik_scipy"]))
            w("")
    w("Timing (s): " + ", ".join("%s %.1f" % (k, v) for k, v in res["timing"].items()) + "\n")
    return L


def fit_check(ctl, feed_dir, level=0.90):
    """One filter per layer: saliencyctl fit vs scipy genpareto.fit on the same peaks."""
    import tempfile
    schema = json.load(open(os.path.join(feed_dir, "schema.json")))
    ref = np.load(os.path.join(feed_dir, "reference.npy"))
    out = []
    with tempfile.TemporaryDirectory() as d:
        for fam in schema["families"]:
            j = fam["first_filter"]
            path = os.path.join(d, "col.npy")
            np.save(path, ref[:, j])
            r = json.loads(subprocess.run([ctl, "fit", path, "--level", repr(level), "--json"], check=True,
                                          capture_output=True, text=True).stdout)
            col = ref[:, j].astype(np.float64)
            t = np.quantile(col, level)
            y = col[col > t] - t
            c, _, s = stats.genpareto.fit(y, floc=0)
            out.append({"layer": fam["name"], "filter": j, "peaks": int(y.size), "shape_ctl": r["shape"], "shape_scipy": float(c),
                        "loglik_ctl": r["loglik"], "loglik_scipy": float(np.sum(stats.genpareto.logpdf(y, c, scale=s)))})
    return out


FINDINGS = """## Reading (hand-written in the script; check it against the tables above after a rerun)

- **Recall@20 / @10 saturate** for both scores: 5 planted values at survival ≤ 1e-3 among 384
  independent filters are almost always in the top 10 whatever the standardization. The difference
  is in the **order**: POT's recall@5 is higher (it puts the 5 equally-rare planted values first
  more often) and its MRR is close to the ceiling H_5/5 = 0.457. z-score over-ranks the heavy-tailed
  layers (GPD, lognormal: MRR above POT's) and under-ranks the light ones (gamma "deep" layer and
  half-normal: recall@5 0.17–0.45 for the deep layer vs POT's 0.85–0.96). POT's per-layer recall@5
  is not uniform either: probably (not verified filter by filter) because light-tailed filters (fitted shape < 0) hit the `(N_t/n)/(N_t+1)` floor
  of FilterBank.tailProbability beyond the fitted endpoint, so they rank after heavy-tailed
  filters whose fitted p is smaller.
- **Clean rows**: POT's top-20 picks follow the layers' filter shares (TV ≈ 0.01); z-score's do
  not (TV ≈ 0.07: too many from the exponential and half-normal layers, too few from the GPD and
  gamma layers). The z-score bias is much smaller than the paper's 96 % deep-layer picks on ResNet-18:
  here there is no per-row gradient-size factor and no layer has a larger z by construction.
- **Shifted rows**: both scores' picks are pulled towards the small layers (every layer gets one
  planted filter per row whatever its size), so TV to the filter shares is not a bias measure there.
- **saliencyctl vs scipy**: identical top-10 sets on every checked row; Grimshaw and
  `genpareto.fit(floc=0)` agree on the shape to ≤ 1e-4 with the same log-likelihood.
"""


def bar_chart(runs, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [l["name"] for l in runs[0]["schema"]["layers"]]
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.8 * len(runs)), squeeze=False)
    x = np.arange(len(names))
    for row, res in zip(axes, runs):
        tag = "p in [%g, %g]" % tuple(res["p_range"])
        ax = row[0]
        sp, sz = res["shares", "pot", "clean"], res["shares", "zscore", "clean"]
        ax.bar(x - 0.27, sp["filter_share"], 0.27, label="filter share", color="#999999")
        ax.bar(x, sp["share"], 0.27, label="POT (TV %.2f)" % sp["tv"], color="#1f77b4")
        ax.bar(x + 0.27, sz["share"], 0.27, label="z-score (TV %.2f)" % sz["tv"], color="#d62728")
        ax.set_xticks(x, names, rotation=20)
        ax.set_title("Top-20 picks per layer, clean rows")
        ax.legend(fontsize=8)
        ax = row[1]
        P, Z = res["planted", "pot"], res["planted", "zscore"]
        ax.bar(x - 0.2, [P[n]["recall@20"] for n in names], 0.4, label="POT", color="#1f77b4")
        ax.bar(x + 0.2, [Z[n]["recall@20"] for n in names], 0.4, label="z-score", color="#d62728")
        ax.axhline(P["random"]["recall@20"], color="k", ls=":", label="random")
        ax.set_xticks(x, names, rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_title("Recall@20 of planted filters, shifted rows (%s)" % tag)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)
    return True


def summary(res):
    P, Z = res["planted", "pot"], res["planted", "zscore"]
    for n in list(P):
        if n in ("random", "ideal"):
            print("%-10s r@5 %.3f r@10 %.3f r@20 %.3f MRR %.3f" % (n, P[n]["recall@5"], P[n]["recall@10"], P[n]["recall@20"], P[n]["mrr"]))
            continue
        print("%-10s POT r@5 %.3f r@10 %.3f r@20 %.3f MRR %.3f | z r@5 %.3f r@10 %.3f r@20 %.3f MRR %.3f" % (
            n, P[n]["recall@5"], P[n]["recall@10"], P[n]["recall@20"], P[n]["mrr"],
            Z[n]["recall@5"], Z[n]["recall@10"], Z[n]["recall@20"], Z[n]["mrr"]))
    for part in ("clean", "shifted"):
        sp, sz = res["shares", "pot", part], res["shares", "zscore", part]
        print("%s top-20 shares: filters %s | POT %s (TV %.3f) | z %s (TV %.3f)" % (
            part, np.round(sp["filter_share"], 3), np.round(sp["share"], 3), sp["tv"], np.round(sz["share"], 3), sz["tv"]))
    for part, c in res.get("cross_check", {}).items():
        print("scipy cross-check %s: Jaccard top-10 mean %.3f min %.3f; Spearman mean %.4f min %.4f" % (
            part, c["jaccard_mean"], c["jaccard_min"], c["spearman_mean"], c["spearman_min"]))
    for e in res.get("fit_check", []):
        print("fit %s: shape ctl %.4f scipy %.4f; loglik ctl %.3f scipy %.3f" % (
            e["layer"], e["shape_ctl"], e["shape_scipy"], e["loglik_ctl"], e["loglik_scipy"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--saliencyctl", default=".build/release/saliencyctl")
    ap.add_argument("--feed", action="append", help="feed directory (repeatable); default data/feeds/synthetic")
    ap.add_argument("--level", type=float, default=0.90)
    ap.add_argument("--check-rows", type=int, default=40, help="rows per part for the scipy cross-check (0: skip)")
    ap.add_argument("--doc", default="docs/synthetic.md")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--json", help="also write the figures as JSON here")
    args = ap.parse_args()
    runs = []
    for feed in args.feed or ["data/feeds/synthetic"]:
        res = evaluate(args.saliencyctl, feed, args.level, args.check_rows)
        if args.check_rows:
            res["fit_check"] = fit_check(args.saliencyctl, feed, args.level)
        pl = json.load(open(os.path.join(feed, "planted.json")))
        res["feed"] = feed
        res["p_range"] = pl["p_range"]
        res["gen_cmd"] = pl.get("command", "python3 experiments/make_synthetic_feed.py --out " + feed)
        print("== %s (planted p in %s)" % (feed, pl["p_range"]))
        summary(res)
        runs.append(res)
    if not args.no_doc:
        L = markdown_header(runs[0], runs)
        for res in runs:
            L += markdown_feed(res, "Feed `%s`: planted values at survival p in [%g, %g]" % (res["feed"], *res["p_range"]))
        L += FINDINGS.splitlines()
        with open(args.doc, "w") as fh:
            fh.write("\n".join(L))
        if bar_chart(runs, os.path.join(os.path.dirname(args.doc), "results", "synthetic_shares.png")):
            print("wrote docs/results/synthetic_shares.png")
        print("wrote", args.doc)
    if args.json:
        out = []
        for res in runs:
            plain = {("/".join(k) if isinstance(k, tuple) else k): v for k, v in res.items() if k != "schema"}
            for c in plain.get("cross_check", {}).values():
                c.pop("pot", None)
            out.append(plain)
        json.dump(out, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
