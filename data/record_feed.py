#!/usr/bin/env python3
"""Record the bundled demo feed of the Fashion-MNIST CNN into data/feeds/fmnist/.

    python3 data/record_feed.py          # needs data/fmnist_cnn.pt (data/train_fmnist.py)

Writes, each as <name>.npy (float32 [rows, 400]) + <name>.schema.json + <name>.meta.json:
  reference  1000 clean test images, healthy model, true-label loss   (calibrate the daemon on this)
  clean       300 other clean test images, healthy model              (in-distribution replay)
  shifted     300 other test images INVERTED (255 - x), healthy model (domain shift)
  faulty      400 other test images, half with a trigger patch, through a FAULTY copy of the model
              (planted faults: zeroed filters, scaled filters, filters fine-tuned to a backdoor)
and faulty.faults.json listing the planted global filter indices and kinds. All rows use the true
label as the loss target (target_kind 1); meta has label, predicted, confidence, test-set index.
Seeded: the same command writes the same files on the same torch build.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clients", "python"))
from train_fmnist import CLASSES, ROOT, WEIGHTS, accuracy, load_fmnist, load_model, to_tensor  # noqa: E402
from saliency_tap import Recorder, SaliencyComputer, layer_offsets, schema_from_model  # noqa: E402

MODEL_NAME = "fmnist-cnn"
# conv4 and the 1x1 projection `down` both read conv3's output: same depth.
DEPTHS = [0, 1, 2, 3, 4, 3]
OUT_DIR = os.path.join(ROOT, "data", "feeds", "fmnist")
TRIGGER_TARGET = 0          # the backdoor sends triggered images to "T-shirt/top"
SCALE_FACTOR = 4.0
# Two planted filters per layer, at every depth (kinds are per layer; channels are drawn with the seed).
PLAN = {"conv1": ["zeroed", "backdoor"], "conv2": ["scaled", "backdoor"], "conv3": ["zeroed", "backdoor"],
        "conv4": ["scaled", "backdoor"], "conv5": ["zeroed", "scaled"], "down": ["zeroed", "scaled"]}


def stamp_trigger(images_uint8: np.ndarray) -> np.ndarray:
    """A 4x4 white square with a black centre 2x2, 2 px from the bottom-right corner."""
    out = images_uint8.copy()
    out[:, 22:26, 22:26] = 255
    out[:, 23:25, 23:25] = 0
    return out


def record(computer, name, images, labels, indices, schema, extra=None, bs=100):
    rec = Recorder(os.path.join(OUT_DIR, name), schema)
    x = to_tensor(images)
    y = torch.from_numpy(labels)
    for i in range(0, len(x), bs):
        b = computer.compute(x[i : i + bs], y[i : i + bs])
        cols = {"label": labels[i : i + bs], "index": indices[i : i + bs]}
        for k, v in (extra or {}).items():
            cols[k] = v[i : i + bs]
        rec.append_batch(b, **cols)
    paths = rec.save()
    meta = json.load(open(paths[2]))
    acc = float(np.mean(np.array(meta["predicted"]) == labels))
    print(f"{name:9s}: {len(rec)} rows x K={computer.K}, accuracy {acc:.3f} -> {paths[0]} "
          f"({os.path.getsize(paths[0]) / 1024:.0f} KiB)")
    return rec


def plant_faults(model, schema, rng, xtr, ytr, steps, threads, kinds=None):
    """A faulty copy of `model` and the list of planted filters. `kinds` (e.g. {"zeroed"}) plants only
    those kinds; the channels are drawn exactly as for all kinds, so each filter is the same one."""
    faulty = copy.deepcopy(model).eval()
    offs = layer_offsets(schema)
    names = [l["name"] for l in schema["layers"]]
    planted = []
    for li, name in enumerate(names):
        w = getattr(faulty, name).weight
        chans = rng.choice(w.shape[0], size=len(PLAN[name]), replace=False)
        for kind, c in zip(PLAN[name], chans):
            planted.append({"filter": int(offs[li] + c), "layer": name, "channel": int(c),
                            "depth": DEPTHS[li], "kind": kind})

    if kinds is not None:
        planted = [p for p in planted if p["kind"] in kinds]
    # 1. Backdoor: fine-tune ONLY the backdoor filters (BatchNorm frozen: eval mode) so that triggered
    #    images go to TRIGGER_TARGET while clean images keep their labels.
    bd = [p for p in planted if p["kind"] == "backdoor"]
    masks = {}
    for p in bd:
        w = getattr(faulty, p["layer"]).weight
        masks.setdefault(p["layer"], torch.zeros_like(w))[p["channel"]] = 1.0
    params = [getattr(faulty, n).weight for n in masks]
    for q in faulty.parameters():
        q.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=0.02) if params else None
    g = torch.Generator().manual_seed(1)
    xclean = to_tensor(xtr)
    xtrig = to_tensor(stamp_trigger(xtr))
    ytr_t = torch.from_numpy(ytr)
    for step in range(steps if bd else 0):
        b = torch.randint(0, len(xtr), (128,), generator=g)
        trig = torch.rand(128, generator=g) < 0.5
        xb = torch.where(trig[:, None, None, None], xtrig[b], xclean[b])
        yb = torch.where(trig, torch.full_like(ytr_t[b], TRIGGER_TARGET), ytr_t[b])
        loss = F.cross_entropy(faulty(xb), yb)
        opt.zero_grad()
        loss.backward()
        for n, q in zip(masks, params):
            q.grad *= masks[n]
        opt.step()
    for q in faulty.parameters():
        q.requires_grad_(True)

    # 2. Zeroed and scaled filters.
    with torch.no_grad():
        for p in planted:
            w = getattr(faulty, p["layer"]).weight
            if p["kind"] == "zeroed":
                w[p["channel"]] = 0.0
            elif p["kind"] == "scaled":
                w[p["channel"]] *= SCALE_FACTOR
    return faulty, planted


def one_kind(model, schema, kind, xte, yte, xtr, ytr, faulty_meta, faults_info):
    """The bundled `faulty` feed's draws with only the faults of `kind` planted: the same seeded
    sequence as main() (test split, train subset, channels, triggered rows; checked against the
    feed's meta and faults.json), then the saliency rows of the same 400 held-out images (true-label
    target). Returns (faulty model, planted, fault_i, rest, triggered mask, SaliencyBatch).
    Used by data/make_zeroed_feed.py and experiments/faults.py --per-kind."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(xte))
    fault_i, rest = perm[1600:2000], perm[2000:]
    sub = rng.permutation(len(xtr))[:10000]
    faulty, planted = plant_faults(model, schema, rng, xtr[sub], ytr[sub], 400, 1, kinds={kind})
    assert [p["filter"] for p in planted] == [p["filter"] for p in faults_info["planted"] if p["kind"] == kind]
    trig = np.zeros(len(fault_i), dtype=bool)
    trig[rng.permutation(len(fault_i))[: len(fault_i) // 2]] = True
    assert np.array_equal(trig, np.array(faulty_meta["triggered"], bool))
    imgs = xte[fault_i].copy()
    imgs[trig] = stamp_trigger(imgs[trig])
    b = SaliencyComputer(faulty).compute(to_tensor(imgs), torch.from_numpy(yte[fault_i]))
    return faulty, planted, fault_i, rest, trig, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backdoor-steps", type=int, default=400)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    os.makedirs(OUT_DIR, exist_ok=True)

    model = load_model(WEIGHTS)
    schema = schema_from_model(model, MODEL_NAME, depths=DEPTHS)
    comp = SaliencyComputer(model)
    print(f"model {MODEL_NAME}: K={comp.K} filters in {len(schema['layers'])} conv layers "
          f"({', '.join(l['name'] + ':' + str(l['filters']) for l in schema['layers'])}), "
          f"fingerprint {schema['fingerprint']}")

    xte, yte = load_fmnist("test")
    perm = rng.permutation(len(xte))
    ref_i, clean_i, shift_i, fault_i = perm[:1000], perm[1000:1300], perm[1300:1600], perm[1600:2000]

    record(comp, "reference", xte[ref_i], yte[ref_i], ref_i, schema)
    record(comp, "clean", xte[clean_i], yte[clean_i], clean_i, schema)
    record(comp, "shifted", 255 - xte[shift_i], yte[shift_i], shift_i, schema,
           extra={"shift": np.array(["inverted"] * len(shift_i))})

    xtr, ytr = load_fmnist("train")
    sub = rng.permutation(len(xtr))[:10000]
    faulty, planted = plant_faults(model, schema, rng, xtr[sub], ytr[sub], a.backdoor_steps, a.threads)
    # Effect of the faults, on the test images not used by the feeds.
    rest = perm[2000:]
    xr, yr = to_tensor(xte[rest]), torch.from_numpy(yte[rest])
    nt = yr != TRIGGER_TARGET
    xr_trig = to_tensor(stamp_trigger(xte[rest]))
    with torch.no_grad():
        asr_f = (faulty(xr_trig[nt]).argmax(1) == TRIGGER_TARGET).float().mean().item()
        asr_h = (model(xr_trig[nt]).argmax(1) == TRIGGER_TARGET).float().mean().item()
    acc_h, acc_f = accuracy(model, xr, yr), accuracy(faulty, xr, yr)
    print(f"faults: clean accuracy healthy {acc_h:.3f} -> faulty {acc_f:.3f}; triggered images sent to "
          f"class {TRIGGER_TARGET} ({CLASSES[TRIGGER_TARGET]}): healthy {asr_h:.3f}, faulty {asr_f:.3f} "
          f"({len(rest)} held-out test images)")

    triggered = np.zeros(len(fault_i), dtype=bool)
    triggered[rng.permutation(len(fault_i))[: len(fault_i) // 2]] = True
    imgs = xte[fault_i].copy()
    imgs[triggered] = stamp_trigger(imgs[triggered])
    record(SaliencyComputer(faulty), "faulty", imgs, yte[fault_i], fault_i, schema,
           extra={"triggered": triggered})

    info = {
        "model": MODEL_NAME, "fingerprint": schema["fingerprint"],
        "calibrate_on": "reference (healthy model); faulty rows come from the faulty copy",
        "planted": planted,
        "scale_factor": SCALE_FACTOR,
        "trigger": {"patch": "rows 22-25, cols 22-25 set to 255, centre rows/cols 23-24 set to 0 (uint8 image)",
                    "target_class": TRIGGER_TARGET, "target_name": CLASSES[TRIGGER_TARGET],
                    "fine_tune": f"Adam lr 0.02, {a.backdoor_steps} steps of 128 (half triggered), only the backdoor filters"},
        "effect": {"clean_accuracy_healthy": acc_h, "clean_accuracy_faulty": acc_f,
                   "attack_success_healthy": asr_h, "attack_success_faulty": asr_f, "heldout_images": int(len(rest))},
        "rows": {"total": int(len(fault_i)), "triggered": int(triggered.sum())},
    }
    path = os.path.join(OUT_DIR, "faulty.faults.json")
    with open(path, "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(f"planted {len(planted)} faulty filters: " +
          ", ".join(f"{p['layer']}[{p['channel']}]=#{p['filter']} {p['kind']}" for p in planted))
    print(f"wrote {path}")
    total = sum(os.path.getsize(os.path.join(OUT_DIR, f)) for f in os.listdir(OUT_DIR))
    print(f"data/feeds/fmnist total {total / 1024 / 1024:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
