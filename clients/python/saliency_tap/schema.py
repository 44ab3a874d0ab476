"""Model schema (protocol.md §1): monitored layers in parameter order and their FNV-1a fingerprint."""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is needed only to derive schemas from models, not to publish or query
    import torch
    from torch import nn

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF


UNIT_KINDS = ("conv", "conv2d", "linear")
# What a row holds: "saliency" (per filter mean |dL/dW|, the default) or "taylor" (Taylor blame,
# per filter max(0, sum w * dL/dw)). A "taylor" schema says so in an optional "quantity" key; a
# "saliency" schema has no such key (its bytes and fingerprint are 0.1's). A non-saliency quantity
# is part of the fingerprint (protocol.md §1), so saliencyd refuses to mix the two under one model name.
QUANTITIES = ("saliency", "taylor")


def check_quantity(quantity) -> str:
    if not isinstance(quantity, str) or quantity not in QUANTITIES:
        raise ValueError(f"quantity must be 'saliency' (mean |dL/dW| per filter) or 'taylor' (Taylor blame, "
                         f"max(0, sum w*dL/dw) per filter), got {quantity!r}")
    return quantity


def schema_quantity(schema: Dict) -> str:
    """What the schema's rows hold: its "quantity" key, "saliency" when absent."""
    return check_quantity(schema.get("quantity", "saliency"))


def _wrapped_inner(m):
    """The module a wrapper forwards to (torch.compile's OptimizedModule, DataParallel, DDP), else None."""
    inner = getattr(m, "_orig_mod", None)
    if inner is not None and type(m).__name__ == "OptimizedModule":
        return inner
    try:
        from torch import nn
    except ImportError:  # pragma: no cover
        return None
    if isinstance(m, nn.DataParallel):
        return m.module
    ddp = getattr(getattr(nn, "parallel", None), "DistributedDataParallel", None)
    if ddp is not None and isinstance(m, ddp):
        return m.module
    return None


def unwrap_model(model):
    """The model under torch.compile / DataParallel / DistributedDataParallel wrappers (any depth)."""
    while True:
        inner = _wrapped_inner(model)
        if inner is None:
            return model
        model = inner


def named_modules_unwrapped(model) -> List[Tuple[str, "nn.Module"]]:
    """Like `model.named_modules()` (same order, each module once), but wrappers are transparent at
    every depth: a compiled or DataParallel submodule contributes its inner module's names, without
    the `_orig_mod.` / `module.` segment. So names do not change when a model is wrapped."""
    out: List[Tuple[str, "nn.Module"]] = []
    seen = set()

    def walk(m, prefix: str) -> None:
        m = unwrap_model(m)
        if id(m) in seen:
            return
        seen.add(id(m))
        out.append((prefix, m))
        for name, child in m._modules.items():
            if child is not None:
                walk(child, f"{prefix}.{name}" if prefix else name)

    walk(model, "")
    return out


def _unit_kind(m, units: Sequence[str]) -> Optional[str]:
    from torch import nn
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if "conv" in units or ("conv2d" in units and isinstance(m, nn.Conv2d)):
            return "conv"
        return None
    if isinstance(m, nn.Linear) and "linear" in units:
        return "linear"
    return None


def _check_units(units: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(units, str):
        units = (units,)
    units = tuple(units)
    bad = [u for u in units if u not in UNIT_KINDS]
    if bad or not units:
        raise ValueError(f"units must be a non-empty subset of {UNIT_KINDS}, got {units!r}")
    return units


def monitored_units(model, units: Sequence[str] = ("conv",)) -> List[Tuple[str, "torch.Tensor", List]]:
    """The monitored weights of `model`, in `named_parameters()` order, as (parameter name, weight,
    [modules using it]).

    A filter is one output unit of a weight: W[j, ...] (docs/method.md §1). units:
      "conv"    every nn.Conv1d / nn.Conv2d / nn.Conv3d weight (default; transposed convs excluded,
                their first axis is not the output channel);
      "conv2d"  nn.Conv2d only (saliency-tap 0.1's set);
      "linear"  rows of nn.Linear weights (MLP heads, transformer projections), off by default.
    Names ignore torch.compile / DataParallel / DDP wrappers. A weight shared by several modules is
    listed once (like named_parameters()); its per-sample gradient sums over all its uses.
    """
    units = _check_units(units)
    users: Dict[int, List] = {}
    for _, m in named_modules_unwrapped(model):
        w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
        if w is not None and _unit_kind(m, units) is not None:
            users.setdefault(id(w), []).append(m)
    out = []
    seen = set()
    for mname, m in named_modules_unwrapped(model):
        for pname, p in m._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            if id(p) in users:
                out.append((f"{mname}.{pname}" if mname else pname, p, users[id(p)]))
    return out


def conv_weights(model, units: Sequence[str] = ("conv",)) -> List[Tuple[str, "torch.Tensor"]]:
    """The monitored weights of `model` as (parameter name, tensor), in `named_parameters()` order.

    Default: every nn.Conv1d/2d/3d weight (1x1 downsample convs included); biases, BatchNorm, Linear
    and transposed convs are not filters. See `monitored_units` for `units` and wrapper handling.
    """
    return [(n, w) for n, w, _ in monitored_units(model, units)]


def _layer_name(param_name: str) -> str:
    return param_name[: -len(".weight")] if param_name.endswith(".weight") else param_name


def validate_model_name(name: str) -> None:
    b = name.encode("utf-8")
    if not 1 <= len(b) <= 128:
        raise ValueError(f"model name must be 1..128 bytes, got {len(b)}")
    if not all(0x20 < c < 0x7F and c != ord(".") for c in b):
        raise ValueError(f"model name {name!r} must be printable ASCII without spaces or dots (it is part of ZeroMQ topics)")


def schema_from_model(model, name: str, depths: Optional[Sequence[int]] = None,
                      units: Sequence[str] = ("conv",), quantity: str = "saliency") -> Dict:
    """The protocol schema of `model`: {"model", "layers": [{"name", "filters", "depth"}], "fingerprint"}.

    Layer names are the weight's parameter name without ".weight" (e.g. "layer1.0.conv1"), the same
    whether or not the model is wrapped by torch.compile, DataParallel or DDP, so the fingerprint is
    stable. `depth` defaults to the layer's position; pass `depths` to group layers (e.g. by ResNet
    stage). `units` selects what counts as a filter (see `monitored_units`). quantity="taylor" adds
    `"quantity": "taylor"` (rows are Taylor blame, not saliency) and the fingerprint covers it, so
    saliencyd refuses (schema_conflict) a Taylor stream under the name of a live saliency stream of the
    same network: publish it under a model name of its own, e.g. "<model>-taylor" (not
    "<model>.taylor": model names have no dots, they are part of ZeroMQ topics).
    """
    validate_model_name(name)
    check_quantity(quantity)
    convs = conv_weights(model, units)
    if not convs:
        raise ValueError(f"model has no weights of kind {tuple(units)!r}; nothing to monitor "
                         "(units=('conv', 'linear') also monitors nn.Linear rows)")
    if depths is not None and len(depths) != len(convs):
        raise ValueError(f"depths has {len(depths)} entries for {len(convs)} conv layers")
    layers = []
    for i, (pname, w) in enumerate(convs):
        layers.append({"name": _layer_name(pname), "filters": int(w.shape[0]),
                       "depth": int(depths[i]) if depths is not None else i})
    schema = {"model": name, "layers": layers}
    if quantity != "saliency":
        schema["quantity"] = quantity
    schema["fingerprint"] = format(schema_fingerprint(schema), "016x")
    return schema


def schema_fingerprint(schema: Dict) -> int:
    """FNV-1a 64 over: model UTF-8, 0x00, then per layer: name UTF-8, 0x00, decimal filters, 0x00;
    then, only when the schema's "quantity" is present and not "saliency": b"quantity", 0x00, the
    quantity UTF-8, 0x00 (so a saliency schema keeps 0.1's fingerprint). An unknown quantity raises
    ValueError (saliencyd would refuse the schema)."""
    quantity = schema_quantity(schema)
    h = FNV_OFFSET

    def mix(data: bytes) -> None:
        nonlocal h
        for c in data:
            h ^= c
            h = (h * FNV_PRIME) & _MASK64

    mix(schema["model"].encode("utf-8") + b"\0")
    for layer in schema["layers"]:
        mix(layer["name"].encode("utf-8") + b"\0")
        mix(str(int(layer["filters"])).encode("ascii") + b"\0")
    if quantity != "saliency":
        mix(b"quantity\0" + quantity.encode("utf-8") + b"\0")
    return h


def filter_count(schema: Dict) -> int:
    return sum(int(l["filters"]) for l in schema["layers"])


def layer_offsets(schema: Dict) -> List[int]:
    """Prefix sums: offsets[i] = global index of layer i's first filter; offsets[-1] = K."""
    out = [0]
    for l in schema["layers"]:
        out.append(out[-1] + int(l["filters"]))
    return out


def locate(schema: Dict, j: int) -> Tuple[int, int]:
    """(layer index, channel) of global filter j."""
    offs = layer_offsets(schema)
    if not 0 <= j < offs[-1]:
        raise IndexError(f"filter {j} out of range 0..{offs[-1] - 1}")
    import bisect
    li = bisect.bisect_right(offs, j) - 1
    return li, j - offs[li]


def schema_json(schema: Dict) -> bytes:
    """Compact JSON bytes of the schema, with its fingerprint (what goes on the wire)."""
    s = dict(schema)
    s["fingerprint"] = format(schema_fingerprint(schema), "016x")
    return json.dumps(s, separators=(",", ":")).encode("utf-8")
