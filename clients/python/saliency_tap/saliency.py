"""Per-sample filter saliency (method.md §1).

s_j(x) = mean over the weights of filter j (W[j,:,:,:]) of |dL/dW|, L = cross-entropy of the model's
output for x against a target: the true label when given, else the predicted label (argmax).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .schema import conv_weights

TARGET_PREDICTED = 0
TARGET_TRUE = 1


@dataclass
class SaliencyBatch:
    """One batch of predictions. `saliency` is float32 [B, K] in global filter order."""
    saliency: np.ndarray
    predicted: np.ndarray      # int64 [B]
    target: np.ndarray         # int64 [B], the label used for the loss
    target_kind: int           # TARGET_TRUE if labels were given, else TARGET_PREDICTED
    confidence: np.ndarray     # float32 [B], softmax max

    def __len__(self) -> int:
        return self.saliency.shape[0]


class SaliencyComputer:
    """Computes per-sample filter saliency for a batch.

    method="vmap" (default) uses torch.func (functional_call + vmap + grad): one vectorised pass,
    exact per-sample gradients (tests compare it with a per-sample loss.backward() loop).
    method="loop" is that reference loop. The model is evaluated in eval mode (BatchNorm uses its
    running statistics, dropout is off); its training flag is restored afterwards. Only conv weights
    are differentiated. `chunk_size` bounds vmap's memory (per-sample gradients of every conv weight
    for `chunk_size` samples at a time).
    """

    def __init__(self, model: nn.Module, method: str = "vmap", chunk_size: Optional[int] = 64):
        if method not in ("vmap", "loop"):
            raise ValueError(f"method must be 'vmap' or 'loop', got {method!r}")
        self.model = model
        self.method = method
        self.chunk_size = chunk_size
        self._convs = conv_weights(model)
        if not self._convs:
            raise ValueError("model has no 4-D conv weights")
        self.names = [n for n, _ in self._convs]
        self.filters = [int(w.shape[0]) for _, w in self._convs]
        self.K = sum(self.filters)

    # -- public -----------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y=None) -> SaliencyBatch:
        return self.compute(x, y)

    def compute(self, x: torch.Tensor, y=None) -> SaliencyBatch:
        """x: [B, ...] input batch; y: optional true labels [B] (int). Returns a SaliencyBatch."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                logits = self.model(x)
            prob = torch.softmax(logits.float(), dim=1)
            conf, pred = prob.max(dim=1)
            if y is None:
                target = pred
                kind = TARGET_PREDICTED
            else:
                target = torch.as_tensor(y, dtype=torch.long, device=x.device).reshape(-1)
                if target.shape[0] != x.shape[0]:
                    raise ValueError(f"{target.shape[0]} labels for {x.shape[0]} samples")
                kind = TARGET_TRUE
            if self.method == "vmap":
                sal = self._vmap(x, target)
            else:
                sal = self._loop(x, target)
        finally:
            self.model.train(was_training)
        return SaliencyBatch(
            saliency=sal.detach().cpu().numpy().astype(np.float32, copy=False),
            predicted=pred.cpu().numpy().astype(np.int64),
            target=target.cpu().numpy().astype(np.int64),
            target_kind=kind,
            confidence=conf.detach().cpu().numpy().astype(np.float32),
        )

    # -- implementations --------------------------------------------------------------------
    def _vmap(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, grad, vmap

        model = self.model
        conv_names = self.names
        params = {n: p.detach() for n, p in model.named_parameters()}
        buffers = {n: b.detach() for n, b in model.named_buffers()}
        conv = {n: params.pop(n) for n in conv_names}

        def loss_fn(conv_params: Dict[str, torch.Tensor], xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
            out = functional_call(model, ({**params, **conv_params}, buffers), (xi.unsqueeze(0),))
            return F.cross_entropy(out, ti.unsqueeze(0))

        g = grad(loss_fn)

        def per_sample(xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
            grads = g(conv, xi, ti)
            return torch.cat([grads[n].abs().flatten(1).mean(1) for n in conv_names])

        return vmap(per_sample, in_dims=(0, 0), chunk_size=self.chunk_size)(x, target)

    def _loop(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = [w for _, w in self._convs]
        rows = []
        for i in range(x.shape[0]):
            out = self.model(x[i : i + 1])
            loss = F.cross_entropy(out, target[i : i + 1])
            gs = torch.autograd.grad(loss, weights)
            rows.append(torch.cat([gw.abs().flatten(1).mean(1) for gw in gs]))
        return torch.stack(rows)
