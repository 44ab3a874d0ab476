"""Per-sample weight gradients of one layer, from its input activations and output gradients.

The rule is the one Opacus' grad samplers use: for a layer y = W * a (convolution or matrix product),
the gradient of sample b's loss w.r.t. W is a function of sample b's activations a_b and output
gradient dL_b/dy_b only. These kernels form that per-sample gradient for one layer, a few samples at
a time, and reduce it at once to the per-filter sum of |g| (summed in float32 or float64, whatever the
model's dtype), so the peak extra memory is one layer's per-sample gradient for a chunk of samples.

Two ways to form a convolution's per-sample weight gradient, chosen per layer by shape:
- "conv": the convolution's own weight-gradient kernel (aten.convolution_backward) run with the
  chunk's samples folded into the groups (batch c, groups g -> batch 1, groups c*g). Fast when the
  output has many positions (early layers) and for grouped/depthwise convolutions.
- "unfold": im2col patches [L, P] per sample and one batched matrix product with the output gradient
  [C_out, L]. Faster when the output has few positions and the per-sample gradient is wide (late
  layers: L = 49, P = 4608 in ResNet layer4); 1x1 convolutions need no im2col at all.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# Per step, at most this many per-sample gradient elements are materialised (2 MB in float32), so
# the gradient is reduced while it is still in cache. The reduction is abs_() in place and sum():
# torch.linalg.vector_norm(ord=1) is 10-40x slower on CPU in torch 2.13.
CHUNK_ELEMENTS = 1 << 19
TILE_ELEMENTS = 1 << 18


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype (float32, bf16, fp16) accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tuple(v, n: int) -> Tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def conv_geometry(module: nn.Module, a: torch.Tensor):
    """(input padded as the convolution sees it, stride, padding, dilation) for `module`.

    Non-zero padding modes (reflect, replicate, circular) and padding="same" (possibly asymmetric)
    are applied to the activation here, so the kernels below see plain zero (int) padding.
    """
    d = a.dim() - 2
    stride, dilation = _tuple(module.stride, d), _tuple(module.dilation, d)
    if module.padding_mode != "zeros":
        a = F.pad(a, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        return a, stride, (0,) * d, dilation
    pad = module.padding
    if isinstance(pad, str):
        if pad == "valid":
            return a, stride, (0,) * d, dilation
        k = module.kernel_size
        pads: List[int] = []
        for i in range(d - 1, -1, -1):      # F.pad order: last dimension first
            total = dilation[i] * (k[i] - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(a, pads), stride, (0,) * d, dilation
    return a, stride, _tuple(pad, d), dilation


def _chunk(n_per_sample: int, batch: int, chunk_size: Optional[int]) -> int:
    c = max(1, CHUNK_ELEMENTS // max(1, n_per_sample))
    if chunk_size is not None:
        c = min(c, chunk_size)
    return max(1, min(c, batch))


def conv_grad_sample(module: nn.Module, a: torch.Tensor, go: torch.Tensor, reduce: bool = True,
                     chunk_size: Optional[int] = None, method: Optional[str] = None) -> torch.Tensor:
    """Per-sample gradient of a ConvNd weight. a: the module's input [B, C_in, *S]; go: dL/d(output)
    [B, C_out, *S_out], where L is the sum of the per-sample losses.

    reduce=True: sum |g| per filter, [B, C_out] (divide by the filter size for the mean).
    reduce=False: the per-sample gradients themselves, [B, *W.shape] (used when a weight is shared).
    Arithmetic in float32 (float64 for float64 models).
    """
    acc = accumulation_dtype(a.dtype)
    a = a.detach().to(acc)
    go = go.detach().to(acc)
    a, stride, padding, dilation = conv_geometry(module, a)
    w_shape = tuple(module.weight.shape)
    groups = int(module.groups)
    B, c_out = go.shape[0], go.shape[1]
    spatial_out = go.shape[2:]
    L = 1
    for s in spatial_out:
        L *= int(s)
    P = 1
    for s in w_shape[1:]:
        P *= int(s)
    if method is None:
        one_by_one = all(k == 1 for k in w_shape[2:])
        method = "unfold" if groups == 1 and a.dim() == 4 and (one_by_one or 16 * L < P) else "conv"
    c = _chunk(c_out * P, B, chunk_size)
    out = torch.empty((B, c_out) if reduce else (B,) + w_shape, dtype=acc, device=a.device)
    if method == "unfold":
        if all(k == 1 for k in w_shape[2:]):
            # 1x1: the patches are the (strided, padded) input positions themselves.
            if any(padding):
                a = F.pad(a, [p for p in reversed(padding) for _ in (0, 1)])
            a = a[(slice(None), slice(None)) + tuple(slice(0, s * st, st) for s, st in zip(spatial_out, stride))]
            patches = a.reshape(B, a.shape[1], L).transpose(1, 2)            # [B, L, C_in]
        else:
            patches = F.unfold(a, w_shape[2:], dilation=dilation, padding=padding, stride=stride)
            patches = patches.transpose(1, 2)                                 # [B, L, P]
        g = go.reshape(B, c_out, L)
        if not reduce:
            for i in range(0, B, c):
                out[i:i + c] = torch.bmm(g[i:i + c], patches[i:i + c]).view((-1,) + w_shape)
            return out
        # One sample and a tile of output channels at a time: the tile [T, P] stays in cache between
        # the matrix product and its reduction.
        T = max(1, min(c_out, TILE_ELEMENTS // max(1, patches.shape[2])))
        buf = torch.empty((T, patches.shape[2]), dtype=acc, device=a.device)
        for i in range(B):
            gi, pi = g[i], patches[i]
            for o in range(0, c_out, T):
                t = buf[: min(T, c_out - o)]
                torch.mm(gi[o:o + T], pi, out=t)
                torch.sum(t.abs_(), 1, out=out[i, o:o + T])
        return out
    if method != "conv":
        raise ValueError(f"method must be 'conv' or 'unfold', got {method!r}")
    c_in = a.shape[1]
    for i in range(0, B, c):
        n = min(c, B - i)
        a1 = a[i:i + n].reshape((1, n * c_in) + tuple(a.shape[2:]))
        g1 = go[i:i + n].reshape((1, n * c_out) + tuple(spatial_out))
        w = torch.empty((), dtype=acc, device=a.device).expand((n * c_out,) + w_shape[1:])
        _, gw, _ = torch.ops.aten.convolution_backward(
            g1, a1, w, None, list(stride), list(padding), list(dilation), False, [0] * len(stride),
            n * groups, [False, True, False])
        if reduce:
            torch.sum(gw.abs_().reshape(n, c_out, P), 2, out=out[i:i + n])   # gw is ours: abs in place
        else:
            out[i:i + n] = gw.reshape((n,) + w_shape)
    return out


def linear_grad_sample(a: torch.Tensor, go: torch.Tensor, reduce: bool = True,
                       chunk_size: Optional[int] = None) -> torch.Tensor:
    """Per-sample gradient of an nn.Linear weight [out, in]. a: input [B, *, in]; go: [B, *, out]
    (batch first; any middle dimensions, e.g. sequence positions, are summed over).

    reduce=True: sum |g| per row, [B, out]. For 2-D inputs the per-sample gradient is the outer
    product go_b a_b^T, so its row sums are |go_b| * ||a_b||_1 and nothing is materialised.
    """
    acc = accumulation_dtype(a.dtype)
    a = a.detach().to(acc)
    go = go.detach().to(acc)
    B = a.shape[0]
    if a.dim() == 2 and reduce:
        return go.abs() * a.abs().sum(1, keepdim=True)
    a3 = a.reshape(B, -1, a.shape[-1])
    g3 = go.reshape(B, -1, go.shape[-1])
    d_out, d_in = g3.shape[-1], a3.shape[-1]
    c = _chunk(d_out * d_in, B, chunk_size)
    out = torch.empty((B, d_out) if reduce else (B, d_out, d_in), dtype=acc, device=a.device)
    for i in range(0, B, c):
        gw = torch.bmm(g3[i:i + c].transpose(1, 2), a3[i:i + c])             # [c, out, in]
        if reduce:
            torch.sum(gw.abs_(), 2, out=out[i:i + c])
        else:
            out[i:i + c] = gw
    return out


def reduce_full(g: torch.Tensor) -> torch.Tensor:
    """Sum |g| per filter of full per-sample gradients [B, C_out, ...] -> [B, C_out]."""
    return g.reshape(g.shape[0], g.shape[1], -1).abs().sum(2)
