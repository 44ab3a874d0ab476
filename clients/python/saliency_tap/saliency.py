"""Per-sample filter saliency (docs/method.md §1).

s_j(x) = mean over the weights of filter j (W[j, ...]) of |dL/dW|, L = the loss of the model's output
for x against a target: by default cross-entropy against the true label when given, else against the
predicted label (argmax); any per-sample loss through `loss_fn`.

Three implementations of the same numbers:
- "hooks" (default): forward hooks on the monitored modules keep each layer's input during the
  model's own forward; one backward of the summed per-sample losses yields every layer's output
  gradient, and each layer's per-sample weight gradients are formed and reduced to per-filter mean
  |g| as soon as its output gradient arrives (grad_sample.py). Weight gradients are never formed
  for the batch, and peak extra memory is one layer's per-sample gradients for a chunk of samples.
- "vmap": torch.func (functional_call + vmap + grad), the reference.
- "loop": one loss.backward() per sample, the other reference.

quantity="taylor" computes instead the **Taylor blame** of each filter (docs/tap.md "Taylor blame"):

    b_j(x) = max(0, sum over the weights w of filter j (W[j, ...]) of w * dL/dw)

the first-order estimate of how much the sample's loss would drop if filter j's weights were zeroed
(L(W) - L(W with W[j] = 0) ~ sum w * g), clipped at 0; in loss units, so comparable across layers;
bias not included. "vmap" and "loop" form the per-sample weight gradients and reduce w * g per
filter. "hooks" never forms them: for a convolution or linear layer o = W * a + bias,
sum_w w * dL_b/dw = sum over output positions of (o_b - bias) * dL_b/do_b, so each layer needs only
its own output (kept by the forward hook) and its output gradient.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batch import TARGET_PREDICTED, TARGET_TRUE, SaliencyBatch
from .grad_sample import accumulation_dtype, conv_grad_sample, linear_grad_sample, reduce_full
from .schema import QUANTITIES, _check_units, check_quantity, _wrapped_inner, monitored_units

__all__ = ["QUANTITIES", "SaliencyComputer", "SaliencyBatch", "TARGET_PREDICTED", "TARGET_TRUE", "default_logits", "shadow_copy"]

log = logging.getLogger("saliency_tap")

LossFn = Callable[[Any, Any], torch.Tensor]
LogitsFn = Callable[[Any], torch.Tensor]


def default_logits(output: Any) -> torch.Tensor:
    """Classification logits [B, C] from a model output: the tensor itself, the "logits" entry of a
    dict (or of a Hugging Face ModelOutput), or the first element of a tuple/list."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        if "logits" in output:
            return output["logits"]
        raise TypeError(f"model returned a dict without 'logits' (keys {list(output)}); pass logits_fn= "
                        "(e.g. lambda out: out['scores']) or loss_fn= for a task that is not classification")
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}; pass logits_fn= or loss_fn=")


# -- a structural copy of the model that shares its parameters and buffers ------------------------
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
               "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def shadow_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares the original's parameter and buffer dictionaries.

    Every module object is copied (so hooks and the train/eval flag on the copy never touch the
    served model) but `_parameters` and `_buffers` are the *same* dicts, so weight updates,
    load_state_dict, .to(device) and dtype changes are seen at once. Wrappers (torch.compile,
    DataParallel, DDP) are replaced by the module they wrap, at any depth: the copy runs eager.
    """
    memo: Dict[int, nn.Module] = {}

    def cp(m: nn.Module) -> nn.Module:
        while True:
            inner = _wrapped_inner(m)
            if inner is None:
                break
            m = inner
        if id(m) in memo:
            return memo[id(m)]
        c = copy.copy(m)
        memo[id(m)] = c
        for k in _HOOK_DICTS:
            v = m.__dict__.get(k)
            if v is not None:
                c.__dict__[k] = type(v)(v)
        c.__dict__["_modules"] = OrderedDict((k, None if ch is None else cp(ch)) for k, ch in m._modules.items())
        return c

    return cp(model)


class _Unit:
    """One monitored weight: its slice of the saliency row and the modules that use it."""
    __slots__ = ("name", "weight", "modules", "kind", "offset", "filters", "per_filter")

    def __init__(self, name, weight, modules, kind, offset):
        self.name, self.weight, self.modules, self.kind, self.offset = name, weight, modules, kind, offset
        self.filters = int(weight.shape[0])
        self.per_filter = int(weight[0].numel())


class _Capture:
    """State of one hooked forward/backward (per thread)."""

    def __init__(self, B: int, K: int, acc: torch.dtype, device, chunk_size: Optional[int]):
        self.B = B
        self.out = torch.zeros(B, K, dtype=acc, device=device)
        self.zeros: List[torch.Tensor] = []
        self.calls: Dict[int, int] = {}
        self.full: Dict[int, torch.Tensor] = {}
        self.chunk_size = chunk_size
        self.error: Optional[BaseException] = None


class SaliencyComputer:
    """Computes per-sample filter saliency for a batch.

    method: "hooks" (default, fast), "vmap" (torch.func reference) or "loop" (per-sample backward).
    units: what a filter is: ("conv",) every Conv1d/2d/3d output channel (default); ("conv2d",) the
      0.1 set; add "linear" for rows of nn.Linear weights.
    loss_fn(output, y) -> per-sample losses [B]: for outputs that are not classification logits, or
      any loss. `y` is what was passed to compute() (None when no label is known: then the function
      must make its own target, e.g. from output.detach()). Samples must not interact (eval mode).
    logits_fn(output) -> logits [B, C]: for the default classification loss and for the predicted
      label and confidence when the output is not a tensor (default: `default_logits`). With a
      custom loss_fn, predicted/confidence are reported only if logits_fn is given.
    autocast: a dtype (torch.bfloat16 / torch.float16) to run the forward under torch.autocast, for
      models served with AMP.
    chunk_size: at most this many samples per per-sample-gradient chunk (hooks; default: by size) or
      per vmap chunk (vmap; default 64).
    quantity: "saliency" (default): per filter mean |dL/dW|; "taylor": Taylor blame, per filter
      max(0, sum w * dL/dw), the first-order loss drop if the filter were zeroed (module docstring).
      Either way the row is returned in `SaliencyBatch.saliency`.

    The model runs in eval mode on a structural copy that shares its parameters and buffers (see
    `shadow_copy`): the served model's hooks, training flag and wrappers are never touched, so
    compute() may run on a background thread while the model serves on another.
    """

    def __init__(self, model: nn.Module, method: str = "hooks", chunk_size: Optional[int] = None,
                 units: Sequence[str] = ("conv",), loss_fn: Optional[LossFn] = None,
                 logits_fn: Optional[LogitsFn] = None, autocast: Optional[torch.dtype] = None,
                 quantity: str = "saliency"):
        if method not in ("hooks", "vmap", "loop"):
            raise ValueError(f"method must be 'hooks', 'vmap' or 'loop', got {method!r}")
        check_quantity(quantity)
        self.model = model
        self.method = method
        self.quantity = quantity
        self._taylor = quantity == "taylor"
        self.chunk_size = chunk_size
        self.units = _check_units(units)
        self.loss_fn = loss_fn
        self.logits_fn = logits_fn or default_logits
        # With a custom loss, a class prediction is reported only if the caller says where logits are.
        self._predicts = loss_fn is None or logits_fn is not None
        self.autocast = autocast
        self._module = shadow_copy(model)
        found = monitored_units(self._module, self.units)
        if not found:
            raise ValueError(f"model has no weights of kind {self.units!r}; nothing to monitor "
                             "(units=('conv', 'linear') also monitors nn.Linear rows)")
        self._units: List[_Unit] = []
        off = 0
        for name, w, mods in found:
            kind = "linear" if isinstance(mods[0], nn.Linear) else "conv"
            self._units.append(_Unit(name, w, mods, kind, off))
            off += int(w.shape[0])
        self._convs = [(u.name, u.weight) for u in self._units]
        self.names = [u.name for u in self._units]
        self.filters = [u.filters for u in self._units]
        self.K = off
        self._per_filter_cpu = torch.tensor([u.per_filter for u in self._units for _ in range(u.filters)],
                                            dtype=torch.float64)
        self._per_filter: Dict[Tuple, torch.Tensor] = {}
        self._local = threading.local()
        self._warned: set = set()
        self._handles: list = []
        if method == "hooks":
            self._install_hooks()

    # -- public -----------------------------------------------------------------------------
    def __call__(self, x, y=None) -> SaliencyBatch:
        return self.compute(x, y)

    def compute(self, x, y=None) -> SaliencyBatch:
        """x: the model's input for a batch (a tensor [B, ...], or a tuple/list/dict whose tensors are
        batch-first; it is passed as model(x)); y: optional targets (true labels [B] for the default
        loss, anything `loss_fn` accepts otherwise). Returns a SaliencyBatch (float32 saliency [B, K])."""
        m = self._module
        m.eval()
        dev = self._units[0].weight.device
        x = _to_device(_not_inference(x), dev)      # e.g. a DataParallel model's inputs on the CPU
        if isinstance(y, torch.Tensor):
            y = y.to(dev)
        B = _batch_size(x)
        kind = TARGET_PREDICTED if y is None else TARGET_TRUE
        if self.method == "hooks":
            sal, pred, conf, target = self._hooks(x, y, B)
        else:
            with torch.no_grad(), self._autocast_ctx(x):
                out = m(x)
            pred, conf = self._predict(out)
            target = self._target(y, pred, B)
            if self.method == "vmap":
                sal = self._vmap(x, target)
            else:
                sal = self._loop(x, target)
        return SaliencyBatch(
            saliency=sal.detach().to(torch.float32).cpu().numpy(),
            predicted=(pred.cpu().numpy().astype(np.int64) if pred is not None else np.full(B, -1, np.int64)),
            target=_target_column(y, target, B),
            target_kind=kind,
            confidence=(conf.detach().float().cpu().numpy() if conf is not None else np.full(B, np.nan, np.float32)),
        )

    def close(self) -> None:
        """Remove the hooks (they live on the private copy; the served model never had any)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- helpers ----------------------------------------------------------------------------
    def _autocast_ctx(self, x):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(_device_of(x, self._units[0].weight).type, dtype=self.autocast)

    def _predict(self, out) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        if not self._predicts:
            return None, None
        logits = self.logits_fn(out)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise TypeError("the default loss needs logits [B, C]; pass logits_fn= or loss_fn=")
        prob = torch.softmax(logits.detach().float(), dim=1)
        conf, pred = prob.max(dim=1)
        return pred, conf

    def _target(self, y, pred, B):
        if self.loss_fn is not None:
            return y
        if y is None:
            return pred
        target = torch.as_tensor(y, dtype=torch.long, device=pred.device).reshape(-1)
        if target.shape[0] != B:
            raise ValueError(f"{target.shape[0]} labels for {B} samples")
        return target

    def _losses(self, out, target) -> torch.Tensor:
        """Per-sample losses [B] (float32 or float64)."""
        if self.loss_fn is not None:
            losses = self.loss_fn(out, target)
        else:
            logits = self.logits_fn(out)
            losses = F.cross_entropy(logits.to(accumulation_dtype(logits.dtype)), target, reduction="none")
        if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
            raise ValueError("loss_fn must return per-sample losses, a tensor of shape [B]")
        return losses

    # -- hooks ------------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        for ui, u in enumerate(self._units):
            for mod in u.modules:
                self._handles.append(mod.register_forward_hook(self._make_forward_hook(ui)))

    def _make_forward_hook(self, ui: int):
        def hook(module, inputs, output):
            cap: Optional[_Capture] = getattr(self._local, "capture", None)
            if cap is None or not isinstance(output, torch.Tensor) or not inputs:
                return None
            a = inputs[0]
            if not isinstance(a, torch.Tensor) or a.shape[0] != cap.B:
                return None
            if self._taylor and (output.dim() < 2 or output.shape[0] != cap.B):
                return None
            cap.calls[ui] = cap.calls.get(ui, 0) + 1
            # A zero leaf makes the output part of the graph even if no weight requires grad, and
            # gives backward a target that does not keep the output gradient alive.
            z = torch.zeros((), dtype=output.dtype, device=output.device, requires_grad=True)
            cap.zeros.append(z)
            out = output + z
            if self._taylor:
                # The model goes on with `out` (a new tensor), so in-place ops after this layer
                # (ReLU(inplace=True), +=) never modify `output`: it is this layer's output at backward.
                o = output.detach()
                out.register_hook(lambda go: self._on_grad_taylor(cap, ui, module, o, go))
                return out
            a = a.detach()
            out.register_hook(lambda go: self._on_grad(cap, ui, module, a, go))
            return out

        return hook

    def _on_grad(self, cap: _Capture, ui: int, module: nn.Module, a: torch.Tensor, go: torch.Tensor):
        try:
            u = self._units[ui]
            shared = cap.calls.get(ui, 0) > 1
            if u.kind == "conv":
                g = conv_grad_sample(module, a, go, reduce=not shared, chunk_size=cap.chunk_size)
            else:
                g = linear_grad_sample(a, go, reduce=not shared, chunk_size=cap.chunk_size)
            if shared:
                cap.full[ui] = cap.full[ui] + g if ui in cap.full else g
            else:
                cap.out[:, u.offset:u.offset + u.filters] = g.to(cap.out.dtype)
        except BaseException as e:  # raised again after backward (autograd would wrap it)
            if cap.error is None:
                cap.error = e
        return None

    def _on_grad_taylor(self, cap: _Capture, ui: int, module: nn.Module, o: torch.Tensor, go: torch.Tensor):
        """Adds this call's sum over output positions of (o_b - bias) * dL_b/do_b to the unit's columns.
        Every call of a shared weight adds its part; the clip at 0 comes after all of them (_hooks)."""
        try:
            u = self._units[ui]
            acc = cap.out.dtype
            o = o.to(acc)
            go = go.detach().to(acc)
            bias = getattr(module, "bias", None)
            if u.kind == "conv":
                if bias is not None:
                    o = o - bias.detach().to(acc).reshape((1, -1) + (1,) * (o.dim() - 2))
                part = (o * go).reshape(o.shape[0], o.shape[1], -1).sum(2)            # [B, C_out]
            else:
                if bias is not None:
                    o = o - bias.detach().to(acc)
                part = (o * go).reshape(o.shape[0], -1, o.shape[-1]).sum(1)           # [B, out]
            cap.out[:, u.offset:u.offset + u.filters] += part
        except BaseException as e:  # raised again after backward (autograd would wrap it)
            if cap.error is None:
                cap.error = e
        return None

    def _hooks(self, x, y, B):
        device = _device_of(x, self._units[0].weight)
        acc = torch.float32 if self.autocast is not None else accumulation_dtype(self._units[0].weight.dtype)
        cap = _Capture(B, self.K, acc, device, self.chunk_size)
        self._local.capture = cap
        try:
            with torch.enable_grad(), torch.inference_mode(False), self._autocast_ctx(x):
                out = self._module(x)
                pred, conf = self._predict(out)
                target = self._target(y, pred, B)
                loss = self._losses(out, target).sum()
        finally:
            self._local.capture = None
        if cap.zeros and loss.requires_grad:
            torch.autograd.grad(loss, cap.zeros, allow_unused=True)
        if cap.error is not None:
            raise cap.error
        for ui, u in enumerate(self._units):
            if ui not in cap.calls and u.name not in self._warned:
                self._warned.add(u.name)
                log.warning("saliency_tap: %s was not called as a module with a batch-first input in the "
                            "forward (used through a functional call, or not at all); its filters read 0", u.name)
        if self._taylor:
            return cap.out.clamp_min_(0), pred, conf, target
        for ui, g in cap.full.items():
            u = self._units[ui]
            cap.out[:, u.offset:u.offset + u.filters] = reduce_full(g).to(cap.out.dtype)
        key = (str(device), acc)
        if key not in self._per_filter:
            self._per_filter[key] = self._per_filter_cpu.to(device=device, dtype=acc)
        return cap.out / self._per_filter[key], pred, conf, target

    # -- references -------------------------------------------------------------------------
    def _vmap(self, x, target) -> torch.Tensor:
        from torch.func import functional_call, grad, vmap

        model = self._module
        names = self.names
        params = {n: p.detach() for n, p in model.named_parameters()}
        buffers = {n: b.detach() for n, b in model.named_buffers()}
        units = {n: params.pop(n) for n in names}
        chunk = self.chunk_size if self.chunk_size is not None else 64

        def loss_fn(unit_params: Dict[str, torch.Tensor], xi, ti) -> torch.Tensor:
            xb = _unsqueeze(xi)
            with self._autocast_ctx(xb):
                out = functional_call(model, ({**params, **unit_params}, buffers), (xb,))
            return self._losses(out, _unsqueeze(ti)).sum()

        g = grad(loss_fn)

        def per_sample(xi, ti) -> torch.Tensor:
            grads = g(units, xi, ti)
            if self._taylor:
                return torch.cat([_taylor_rows(units[n], grads[n]) for n in names])
            return torch.cat([grads[n].abs().flatten(1).mean(1).to(accumulation_dtype(grads[n].dtype)) for n in names])

        t_dims = 0 if target is not None else None
        out = vmap(per_sample, in_dims=(0, t_dims), chunk_size=chunk)(x, target)
        return out.clamp_min(0) if self._taylor else out

    def _loop(self, x, target) -> torch.Tensor:
        weights = [u.weight for u in self._units]
        rows = []
        B = _batch_size(x)
        for i in range(B):
            with torch.enable_grad(), self._autocast_ctx(x):
                out = self._module(_index(x, slice(i, i + 1)))
                loss = self._losses(out, _index(target, slice(i, i + 1))).sum()
            gs = torch.autograd.grad(loss, weights, allow_unused=True)
            rows.append(torch.cat([
                torch.zeros(w.shape[0], dtype=accumulation_dtype(w.dtype), device=w.device) if gw is None
                else _taylor_rows(w.detach(), gw) if self._taylor
                else gw.abs().flatten(1).mean(1).to(accumulation_dtype(gw.dtype))
                for gw, w in zip(gs, weights)]))
        out = torch.stack(rows)
        return out.clamp_min(0) if self._taylor else out


def _taylor_rows(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per filter sum of w * g (not yet clipped), in the accumulation dtype."""
    acc = accumulation_dtype(w.dtype)
    return (w.to(acc) * g.to(acc)).flatten(1).sum(1)


# -- batch helpers (tensors, or tuples/lists/dicts of batch-first tensors) ---------------------------
def _batch_size(x) -> int:
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return int(x.shape[0])
    if isinstance(x, dict):
        vals = list(x.values())
    elif isinstance(x, (tuple, list)):
        vals = list(x)
    else:
        vals = []
    for v in vals:
        try:
            return _batch_size(v)
        except TypeError:
            continue
    raise TypeError(f"cannot find a batch-first tensor in an input of type {type(x).__name__}")


def _index(x, idx):
    if x is None:
        return None
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x[idx]
    if isinstance(x, dict):
        return type(x)((k, _index(v, idx)) for k, v in x.items())
    if isinstance(x, (tuple, list)):
        return type(x)(_index(v, idx) for v in x)
    return x


def _not_inference(x):
    """Inference-mode tensors cannot be saved for backward: copy them into normal tensors."""
    if isinstance(x, torch.Tensor):
        if x.is_inference():
            with torch.inference_mode(False):
                return x.clone()
        return x
    if isinstance(x, dict):
        return type(x)((k, _not_inference(v)) for k, v in x.items())
    if isinstance(x, (tuple, list)):
        return type(x)(_not_inference(v) for v in x)
    return x


def _to_device(x, device):
    if isinstance(x, torch.Tensor):
        return x if x.device == device else x.to(device)
    if isinstance(x, dict):
        return type(x)((k, _to_device(v, device)) for k, v in x.items())
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _unsqueeze(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.unsqueeze(0)
    if isinstance(x, dict):
        return type(x)((k, _unsqueeze(v)) for k, v in x.items())
    if isinstance(x, (tuple, list)):
        return type(x)(_unsqueeze(v) for v in x)
    return x


def _device_of(x, default: torch.Tensor):
    if isinstance(x, torch.Tensor):
        return x.device
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        for v in x:
            if isinstance(v, torch.Tensor):
                return v.device
    return default.device


def _target_column(y, target, B: int) -> np.ndarray:
    """The header's target class per row: the label used for the loss when it is a class index."""
    t = target if y is None else y
    if t is None:
        return np.full(B, -1, np.int64)
    try:
        arr = torch.as_tensor(t).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        return np.full(B, -1, np.int64)
    if arr.shape[0] != B or arr.is_floating_point() or arr.is_complex():
        return np.full(B, -1, np.int64)
    return arr.numpy().astype(np.int64)
