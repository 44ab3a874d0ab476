"""Domain shifts for the experiments (issue: "shifts a user would recognise" + a second domain).

Every shift returns images as float32 [N, 28, 28] in [0, 1] pixel units, plus labels. The Fashion-MNIST
shifts use the SAME 300 test images as the bundled `shifted` feed (record_feed.py: perm[1300:1600] of
default_rng(0)), so `inverted` here reproduces data/feeds/fmnist/shifted exactly.

  inverted      1 - x                                   (the bundled feed's shift)
  rotated       scipy.ndimage.rotate by +40 deg, bilinear, same 28x28 frame, zero fill
  noise         x + N(0, 0.4^2) per pixel, clipped to [0, 1] (seeded)
  lowcontrast   0.3 x + 0.35
  digits        sklearn load_digits 8x8 (0..16) -> 20x20 bilinear, padded to 28x28 (MNIST-style), / 16
                300 seeded images. Fashion classes do not apply: see DIGITS_TARGETS.

Digits have no Fashion-MNIST label. Two loss targets are offered (docs/method.md §1):
  digits        target = the model's PREDICTED label (target_kind 0), what a monitor sees for an
                unlabeled domain. Accuracy is undefined; we report the identity-mapping agreement only
                as a number that should sit near chance.
  digits-idmap  target = the digit's value used as a Fashion class index (0 -> T-shirt, ..., 9 -> Ankle
                boot): an arbitrary FIXED mapping that plays the role of "feedback says you are wrong".
                Used for depth bias only (fine-tuning towards an arbitrary class is not meaningful).

    from shifts import SHIFTS, make_shift, shift_rows
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "clients", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "data"))   # train_fmnist
from train_fmnist import MEAN, STD, load_fmnist  # noqa: E402
from saliency_tap import SaliencyComputer  # noqa: E402

SHIFTS = ["inverted", "rotated", "noise", "lowcontrast", "digits", "digits-idmap"]
ROT_DEG = 40.0
NOISE_SD = 0.4
N_ROWS = 300
DIGITS_TARGETS = {"digits": "predicted", "digits-idmap": "digit value as class index"}


def shifted_feed_indices(seed=0):
    """The test-set indices of the bundled `shifted` feed (record_feed.py's seeded split)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(10000)
    return perm[1300:1600]


def _digits(n=N_ROWS, seed=0):
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits
    d = load_digits()
    idx = np.random.default_rng(seed).permutation(len(d.images))[:n]
    small = d.images[idx] / 16.0
    big = np.stack([np.clip(zoom(im, 20 / 8, order=1), 0, 1) for im in small])
    out = np.zeros((n, 28, 28), np.float32)
    out[:, 4:24, 4:24] = big
    return out, d.target[idx].astype(np.int64), idx


def make_shift(name):
    """(images float32 [N,28,28] in [0,1], labels int64 [N] or None, targets int64 [N] or None, index)."""
    if name.startswith("digits"):
        x, digit, idx = _digits()
        if name == "digits":
            return x, digit, None, idx           # labels = digit (for the chance-level identity check only)
        return x, digit, digit, idx
    xte, yte = load_fmnist("test")
    idx = shifted_feed_indices()
    x = xte[idx].astype(np.float32) / 255.0
    y = yte[idx]
    if name == "clean":
        pass
    elif name == "inverted":
        x = 1.0 - x
    elif name == "rotated":
        from scipy.ndimage import rotate
        x = np.stack([rotate(im, ROT_DEG, reshape=False, order=1, mode="constant", cval=0.0) for im in x])
        x = np.clip(x, 0, 1)
    elif name == "noise":
        rng = np.random.default_rng(1)
        x = np.clip(x + rng.normal(0, NOISE_SD, x.shape), 0, 1)
    elif name == "lowcontrast":
        x = 0.3 * x + 0.35
    else:
        raise ValueError(f"unknown shift {name!r}; known: {SHIFTS}")
    return x.astype(np.float32), y, y, idx


def to_input(x01):
    return ((torch.from_numpy(np.asarray(x01, np.float32)) - MEAN) / STD).unsqueeze(1)


def shift_rows(model, name, bs=100):
    """Saliency rows of `model` on shift `name`. Returns (rows float32 [N,K], meta dict)."""
    x, labels, targets, idx = make_shift(name)
    comp = SaliencyComputer(model)
    xt = to_input(x)
    rows, pred, conf = [], [], []
    for i in range(0, len(xt), bs):
        yb = None if targets is None else torch.from_numpy(targets[i : i + bs])
        b = comp.compute(xt[i : i + bs], yb)
        rows.append(b.saliency)
        pred.append(b.predicted)
        conf.append(b.confidence)
    pred = np.concatenate(pred)
    meta = {"label": labels, "target": targets, "predicted": pred, "confidence": np.concatenate(conf),
            "index": idx, "x": x, "accuracy": float(np.mean(pred == labels))}
    return np.concatenate(rows).astype(np.float32), meta
