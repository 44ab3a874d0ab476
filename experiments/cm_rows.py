#!/usr/bin/env python3
"""Saliency rows for the common-mode experiments (issue 13), computed once and cached outside the repo.

    python3 experiments/cm_rows.py healthy     # ~1 min: healthy model, all 10,000 test images (clean)
    python3 experiments/cm_rows.py shifts      # ~2 min: 4 shifts x 3 severities on the 2,000 eval images
    python3 experiments/cm_rows.py faults      # one filter AND one kind at a time (zeroed, scaled x4, backdoor),
                                               # 500 eval images each: 36 models, ~10 min in all; each run stops
                                               # after ~4 min and the next run continues (run until "faults: done")
    python3 experiments/cm_rows.py backdoor    # ~3 min: backdoor fine-tuned BEFORE calibration + ablation
    python3 experiments/cm_rows.py bdpred      # ~20 s: the same backdoored model, predicted-label loss target
    python3 experiments/cm_rows.py all         # every stage (faults: until its time budget)

Cache: $CM_CACHE (default /tmp/saliencyd_cm_cache), one .npz per condition; never committed. Every stage
is seeded, one torch thread. The test set is split once (default_rng(100)): CAL_POOL = 8,000 images from
which calibration (4,000) and clean (2,000) rows are drawn per seed, EVAL_POOL = the other 2,000 images,
which every shift and fault is applied to (so shifted/faulty rows never share an image with calibration).

Each .npz holds sal [N,K] float32, pred, conf, entropy, label, target (true label unless noted), index
(test-set index), and for triggered conditions `trig` (bool).
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import layer_of_filter  # noqa: E402,F401  (sets sys.path for data/ and clients/python)
from record_feed import DEPTHS, MODEL_NAME, SCALE_FACTOR, TRIGGER_TARGET, stamp_trigger  # noqa: E402
from saliency_tap import SaliencyComputer, schema_from_model  # noqa: E402
from train_fmnist import MEAN, STD, load_fmnist, load_model  # noqa: E402

CACHE = os.environ.get("CM_CACHE", "/tmp/saliencyd_cm_cache")
SPLIT_SEED = 100
N_EVAL = 2000
# Three severities per shift (pixel values in [0, 1]), mild to strong. The strongest rotated/noise/inverted
# match or exceed experiments/shifts.py's single setting; lowcontrast stops at 0.5 (shifts.py: 0.3).
SEVERITIES = {
    "rotated": [15.0, 30.0, 45.0],          # degrees
    "noise": [0.1, 0.2, 0.4],               # Gaussian sd, clipped
    "lowcontrast": [0.9, 0.75, 0.5],        # a*x + (1-a)/2
    "inverted": [0.15, 0.3, 1.0],           # (1-a)*x + a*(1-x): a=1 is the bundled feed's inversion
}
FAULT_KINDS = ["zeroed", "scaled", "backdoor"]
N_FAULT_ROWS = 500
BD_STEPS_SINGLE = 250
BD_CAL_PER_LAYER = 4
BD_CAL_STEPS = 400
BUDGET_S = 200          # the faults stage stops starting new models after this (re-run to continue)


def split():
    perm = np.random.default_rng(SPLIT_SEED).permutation(10000)
    return perm[: 10000 - N_EVAL], perm[10000 - N_EVAL:]


def path(name):
    return os.path.join(CACHE, name + ".npz")


def have(name):
    return os.path.exists(path(name))


def load(name):
    d = np.load(path(name), allow_pickle=False)
    return {k: d[k] for k in d.files}


def to_input(x01):
    return ((torch.from_numpy(np.asarray(x01, np.float32)) - MEAN) / STD).unsqueeze(1)


def compute(model, x01, target, bs=100, quantity="saliency"):
    comp = SaliencyComputer(model, quantity=quantity)
    xt = to_input(x01)
    sal, pred, conf, ent = [], [], [], []
    for i in range(0, len(xt), bs):
        b = comp.compute(xt[i:i + bs], torch.from_numpy(np.asarray(target[i:i + bs], np.int64)))
        sal.append(b.saliency)
        pred.append(b.predicted)
        conf.append(b.confidence)
        with torch.no_grad():
            p = F.softmax(model(xt[i:i + bs]), 1)
            ent.append((-(p * torch.log(p.clamp_min(1e-30))).sum(1)).numpy())
    return dict(sal=np.concatenate(sal).astype(np.float32), pred=np.concatenate(pred),
                conf=np.concatenate(conf), entropy=np.concatenate(ent))


def save(name, d):
    os.makedirs(CACHE, exist_ok=True)
    np.savez(path(name), **d)
    print(f"  cached {name}: {d['sal'].shape}, accuracy {np.mean(d['pred'] == d['label']):.3f}", flush=True)


def apply_shift(x, shift, sev, seed=1):
    if shift == "rotated":
        from scipy.ndimage import rotate
        return np.clip(np.stack([rotate(im, sev, reshape=False, order=1, mode="constant", cval=0.0) for im in x]), 0, 1)
    if shift == "noise":
        return np.clip(x + np.random.default_rng(seed).normal(0, sev, x.shape), 0, 1)
    if shift == "lowcontrast":
        return sev * x + (1 - sev) / 2
    if shift == "inverted":
        return (1 - sev) * x + sev * (1 - x)
    raise ValueError(shift)


def stage_healthy(model):
    if have("healthy_clean"):
        return
    xte, yte = load_fmnist("test")
    d = compute(model, xte / 255.0, yte)
    d.update(label=yte, target=yte, index=np.arange(10000))
    save("healthy_clean", d)


def stage_shifts(model):
    xte, yte = load_fmnist("test")
    _, ev = split()
    x = xte[ev] / 255.0
    for shift, sevs in SEVERITIES.items():
        for si, sev in enumerate(sevs):
            name = f"shift_{shift}_{si}"
            if have(name):
                continue
            d = compute(model, apply_shift(x, shift, sev).astype(np.float32), yte[ev])
            d.update(label=yte[ev], target=yte[ev], index=ev, severity=np.float64(sev))
            save(name, d)


def train_backdoor(model, filters, steps, seed, lr=0.02):
    """Fine-tune ONLY `filters` [(layer, channel)] (BatchNorm frozen) so triggered images go to class 0
    (record_feed.plant_faults' recipe: Adam lr 0.02, batches of 128, half triggered)."""
    xtr, ytr = load_fmnist("train")
    sub = np.random.default_rng(seed).permutation(len(xtr))[:10000]
    xtr, ytr = xtr[sub], ytr[sub]
    m = copy.deepcopy(model).eval()
    masks = {}
    for lay, c in filters:
        masks.setdefault(lay, torch.zeros_like(getattr(m, lay).weight))[c] = 1.0
    params = [getattr(m, n).weight for n in masks]
    for q in m.parameters():
        q.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    xclean = to_input(xtr / 255.0)
    xtrig = to_input(stamp_trigger(xtr) / 255.0)
    yt = torch.from_numpy(ytr)
    for _ in range(steps):
        b = torch.randint(0, len(xtr), (128,), generator=g)
        tr = torch.rand(128, generator=g) < 0.5
        xb = torch.where(tr[:, None, None, None], xtrig[b], xclean[b])
        yb = torch.where(tr, torch.full_like(yt[b], TRIGGER_TARGET), yt[b])
        loss = F.cross_entropy(m(xb), yb)
        opt.zero_grad()
        loss.backward()
        for n, q in zip(masks, params):
            q.grad *= masks[n]
        opt.step()
    for q in m.parameters():
        q.requires_grad_(True)
    return m.eval()


@torch.no_grad()
def attack_success(m, xtrig_t, nt):
    return float((m(xtrig_t[nt]).argmax(1) == TRIGGER_TARGET).float().mean())


def offsets(model):
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "down"]
    out, o = {}, 0
    for n in names:
        out[n] = o
        o += getattr(model, n).weight.shape[0]
    return out, names


def fault_filters(model):
    """Two filters per layer (seeded), the same for every kind: 12 filters."""
    offs, names = offsets(model)
    rng = np.random.default_rng(7)
    out = []
    for n in names:
        for c in rng.choice(getattr(model, n).weight.shape[0], size=2, replace=False):
            out.append((n, int(c), offs[n] + int(c)))
    return out


def stage_faults(model, quantity="saliency"):
    """quantity "taylor": the same 36 models and images, Taylor-blame rows (experiments/blame.py), cached as
    taylor_fault_<kind>_<filter>."""
    prefix = "" if quantity == "saliency" else quantity + "_"
    xte, yte = load_fmnist("test")
    _, ev = split()
    idx = ev[:N_FAULT_ROWS]
    x = xte[idx]
    trig = np.zeros(len(idx), bool)
    trig[np.random.default_rng(3).permutation(len(idx))[: len(idx) // 2]] = True
    held = ev[N_FAULT_ROWS:]
    nt_t = torch.from_numpy(yte[held] != TRIGGER_TARGET)
    xtrig_held = to_input(stamp_trigger(xte[held]) / 255.0)
    xclean_held = to_input(xte[held] / 255.0)
    t_start = time.time()
    for lay, c, f in fault_filters(model):
        for kind in FAULT_KINDS:
            name = f"{prefix}fault_{kind}_{f}"
            if have(name):
                continue
            if time.time() - t_start > BUDGET_S:
                print(f"  time budget of {BUDGET_S} s reached: run `cm_rows.py faults` again to continue", flush=True)
                return
            t0 = time.time()
            if kind == "backdoor":
                m = train_backdoor(model, [(lay, c)], BD_STEPS_SINGLE, seed=f)
                imgs = x.copy()
                imgs[trig] = stamp_trigger(imgs[trig])
            else:
                m = copy.deepcopy(model).eval()
                with torch.no_grad():
                    w = getattr(m, lay).weight
                    if kind == "zeroed":
                        w[c] = 0.0
                    else:
                        w[c] *= SCALE_FACTOR
                imgs = x
            d = compute(m, imgs / 255.0, yte[idx], quantity=quantity)
            with torch.no_grad():
                acc = float((m(xclean_held).argmax(1).numpy() == yte[held]).mean())
            asr = attack_success(m, xtrig_held, nt_t)
            d.update(label=yte[idx], target=yte[idx], index=idx, trig=trig if kind == "backdoor" else np.zeros(len(idx), bool),
                     filter=np.int64(f), heldout_acc=np.float64(acc), asr=np.float64(asr))
            save(name, d)
            print(f"  {name} {lay}[{c}]: held-out clean acc {acc:.3f}, trigger->0 {asr:.3f}, {time.time() - t0:.0f} s", flush=True)


def stage_backdoor(model):
    """Backdoor present at calibration: fine-tune 4 filters per layer, then decide by ablation which carry it."""
    t0 = time.time()
    offs, names = offsets(model)
    mpath = os.path.join(CACHE, "bdcal_model.pt")
    rng = np.random.default_rng(11)
    trained = [(n, int(c)) for n in names
               for c in rng.choice(getattr(model, n).weight.shape[0], BD_CAL_PER_LAYER, replace=False)]
    if os.path.exists(mpath):
        bd = copy.deepcopy(model)
        bd.load_state_dict(torch.load(mpath, weights_only=True))
        bd.eval()
    else:
        bd = train_backdoor(model, trained, BD_CAL_STEPS, seed=11)
        os.makedirs(CACHE, exist_ok=True)
        torch.save(bd.state_dict(), mpath)
        print(f"  backdoor fine-tune of {len(trained)} filters: {time.time() - t0:.0f} s", flush=True)
    xte, yte = load_fmnist("test")
    cal, ev = split()
    if not os.path.exists(os.path.join(CACHE, "bdcal_ablation.json")):
        ablate(model, bd, trained, offs, xte, yte, ev[1000:])
    if not have("bdcal_clean"):
        d = compute(bd, xte[cal[:6000]] / 255.0, yte[cal[:6000]])
        d.update(label=yte[cal[:6000]], target=yte[cal[:6000]], index=cal[:6000])
        save("bdcal_clean", d)
    if not have("bdcal_trig"):
        ti = ev[:1000]
        d = compute(bd, stamp_trigger(xte[ti]) / 255.0, yte[ti])
        d.update(label=yte[ti], target=yte[ti], index=ti, trig=np.ones(len(ti), bool))
        save("bdcal_trig", d)
    print(f"  backdoor stage {time.time() - t0:.0f} s")


def stage_bdpred(model):
    """The backdoored model's rows with the PREDICTED label as the loss target (target_kind 0): clean
    calibration rows and triggered rows, same images as bdcal_clean[:4000] / bdcal_trig."""
    if have("bdpred_trig"):
        return
    bd = copy.deepcopy(model)
    bd.load_state_dict(torch.load(os.path.join(CACHE, "bdcal_model.pt"), weights_only=True))
    bd.eval()
    xte, yte = load_fmnist("test")
    cal, ev = split()
    for name, idx, imgs in [("bdpred_clean", cal[:4000], xte[cal[:4000]]), ("bdpred_trig", ev[:1000], stamp_trigger(xte[ev[:1000]]))]:
        with torch.no_grad():
            pred = bd(to_input(imgs / 255.0)).argmax(1).numpy()
        d = compute(bd, imgs / 255.0, pred)
        d.update(label=yte[idx], target=pred, index=idx)
        save(name, d)


GREEDY_STOP = 0.10     # restore filters greedily until the trigger's success is at most this


def ablate(model, bd, trained, offs, xte, yte, held, out=None):
    """Which trained filters carry the backdoor, by restoring their clean (pre-backdoor) weights on
    held-out images: each one alone, and a greedy set (restore the filter that lowers the attack success
    most, repeat) until the success is <= GREEDY_STOP."""
    nt = torch.from_numpy(yte[held] != TRIGGER_TARGET)
    xtrig = to_input(stamp_trigger(xte[held]) / 255.0)
    xcl = to_input(xte[held] / 255.0)

    def restored(fs):
        m = copy.deepcopy(bd)
        with torch.no_grad():
            for lay, c in fs:
                getattr(m, lay).weight[c] = getattr(model, lay).weight[c]
        return m

    with torch.no_grad():
        acc_bd = float((bd(xcl).argmax(1).numpy() == yte[held]).mean())
        acc_h = float((model(xcl).argmax(1).numpy() == yte[held]).mean())
    asr_bd, asr_h = attack_success(bd, xtrig, nt), attack_success(model, xtrig, nt)
    single = {}
    for lay, c in trained:
        single[f"{lay}[{c}]"] = {"filter": offs[lay] + c, "asr": attack_success(restored([(lay, c)]), xtrig, nt)}
    chosen, asr_now, greedy = [], asr_bd, []
    while asr_now > GREEDY_STOP and len(chosen) < len(trained):
        cand = [f for f in trained if f not in chosen]
        asrs = [attack_success(restored(chosen + [f]), xtrig, nt) for f in cand]
        best = cand[int(np.argmin(asrs))]
        chosen.append(best)
        asr_now = float(min(asrs))
        greedy.append({"filter": offs[best[0]] + best[1], "name": f"{best[0]}[{best[1]}]", "asr_after": asr_now})
    info = {"trained": [{"filter": offs[l] + c, "name": f"{l}[{c}]"} for l, c in trained],
            "steps": BD_CAL_STEPS, "asr_backdoored": asr_bd, "asr_healthy": asr_h,
            "clean_acc_backdoored": acc_bd, "clean_acc_healthy": acc_h, "heldout_images": int(len(held)),
            "greedy_stop": GREEDY_STOP, "single_restore": single, "greedy": greedy}
    with open(out or os.path.join(CACHE, "bdcal_ablation.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"  backdoored: clean acc {acc_bd:.3f} (healthy {acc_h:.3f}), trigger->0 {asr_bd:.3f} (healthy {asr_h:.3f})")
    print("  single restores: " + ", ".join(f"{k} {v['asr']:.2f}" for k, v in single.items()))
    print("  greedy: " + ", ".join(f"{g['name']}->{g['asr_after']:.2f}" for g in greedy), flush=True)


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    stages = sys.argv[1:] or ["all"]
    model = load_model()
    for s in ["healthy", "shifts", "backdoor", "bdpred", "faults"]:
        if s in stages or "all" in stages:
            t0 = time.time()
            print(f"stage {s}", flush=True)
            globals()["stage_" + s](model)
            print(f"stage {s}: {time.time() - t0:.0f} s", flush=True)
    if ("faults" in stages or "all" in stages) and all(
            have(f"fault_{k}_{f}") for _, _, f in fault_filters(model) for k in FAULT_KINDS):
        print("faults: done (all 36 single-filter fault models cached)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
