#!/usr/bin/env python3
"""Train the small Fashion-MNIST CNN that the demo feed and the experiments use.

    python3 data/train_fmnist.py            # writes data/fmnist_cnn.pt, prints test accuracy

Seeded and CPU-only; reads the Debian dataset-fashion-mnist files (no download). Other scripts
import `FmnistCNN`, `load_fmnist` and `load_model` from here.
"""
from __future__ import annotations

import argparse
import gzip
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist")
WEIGHTS = os.path.join(ROOT, "data", "fmnist_cnn.pt")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train pixel statistics


class FmnistCNN(nn.Module):
    """conv1 1->16, conv2 16->32, pool, conv3 32->64, pool, then a residual stage: conv4 64->96 (stride 2),
    conv5 96->96, and a 1x1 stride-2 projection `down` 64->96; global average pool; fc 96->10.
    Every conv is followed by BatchNorm. 400 filters: 16 + 32 + 64 + 96 + 96 + 96."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.conv4 = nn.Conv2d(64, 96, 3, stride=2, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(96)
        self.conv5 = nn.Conv2d(96, 96, 3, padding=1, bias=False)
        self.bn5 = nn.BatchNorm2d(96)
        self.down = nn.Conv2d(64, 96, 1, stride=2, bias=False)
        self.bnd = nn.BatchNorm2d(96)
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))                 # 28x28
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)  # 14x14
        h = F.max_pool2d(F.relu(self.bn3(self.conv3(h))), 2)  # 7x7
        r = F.relu(self.bn4(self.conv4(h)))                 # 4x4
        r = self.bn5(self.conv5(r))
        h = F.relu(r + self.bnd(self.down(h)))
        return self.fc(h.mean(dim=(2, 3)))


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 0x08, f"{path}: not an unsigned-byte idx file"
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fmnist(split: str):
    """(images uint8 [N, 28, 28], labels int64 [N]) for split 'train' or 'test'."""
    prefix = "train" if split == "train" else "t10k"
    x = _read_idx(os.path.join(DATA_DIR, f"{prefix}-images-idx3-ubyte.gz"))
    y = _read_idx(os.path.join(DATA_DIR, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
    return x, y


def to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalised float32 [N, 1, 28, 28]."""
    x = torch.from_numpy(images_uint8.astype(np.float32) / 255.0).unsqueeze(1)
    return (x - MEAN) / STD


def load_model(path: str = WEIGHTS) -> FmnistCNN:
    m = FmnistCNN()
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    m.eval()
    return m


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += (model(x[i : i + bs]).argmax(1) == y[i : i + bs]).sum().item()
    return correct / len(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-size", type=int, default=30000, help="training subset size (seeded)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=WEIGHTS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    xtr, ytr = load_fmnist("train")
    xte, yte = load_fmnist("test")
    idx = rng.permutation(len(xtr))[: a.train_size]
    xtr_t, ytr_t = to_tensor(xtr[idx]), torch.from_numpy(ytr[idx])
    xte_t, yte_t = to_tensor(xte), torch.from_numpy(yte)

    model = FmnistCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    bs = 128
    steps = a.epochs * ((len(xtr_t) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    t0 = time.time()
    g = torch.Generator().manual_seed(a.seed)
    for ep in range(a.epochs):
        model.train()
        perm = torch.randperm(len(xtr_t), generator=g)
        total = 0.0
        for i in range(0, len(perm), bs):
            b = perm[i : i + bs]
            xb = xtr_t[b]
            # light augmentation: random horizontal flip (clothes are left-right symmetric)
            flip = torch.rand(len(b), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), ytr_t[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        print(f"epoch {ep + 1}/{a.epochs}: train loss {total / len(perm):.4f}, "
              f"test acc {accuracy(model, xte_t, yte_t):.4f}, {time.time() - t0:.0f} s", flush=True)
    model.eval()
    acc = accuracy(model, xte_t, yte_t)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    torch.save(model.state_dict(), a.out)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"test accuracy {acc:.4f} on {len(xte_t)} images; {nparams} parameters; "
          f"wrote {a.out} ({os.path.getsize(a.out) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
