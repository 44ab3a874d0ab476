"""Model schema (protocol.md §1): conv layers in parameter order and their FNV-1a fingerprint."""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF


def conv_weights(model: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """The 4-D conv weights of `model` in `named_parameters()` order, as (parameter name, tensor).

    A filter is W[j, :, :, :] (method.md §1). Only `nn.Conv2d` weights count (1x1 downsample convs
    included); biases, BatchNorm, Linear and transposed convs (whose first axis is not the output
    channel) do not. Parameters shared between modules are listed once, like named_parameters().
    """
    conv_param_ids = set()
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight is not None and m.weight.dim() == 4:
            conv_param_ids.add(id(m.weight))
    return [(n, p) for n, p in model.named_parameters() if id(p) in conv_param_ids]


def _layer_name(param_name: str) -> str:
    return param_name[: -len(".weight")] if param_name.endswith(".weight") else param_name


def validate_model_name(name: str) -> None:
    b = name.encode("utf-8")
    if not 1 <= len(b) <= 128:
        raise ValueError(f"model name must be 1..128 bytes, got {len(b)}")
    if not all(0x20 < c < 0x7F and c != ord(".") for c in b):
        raise ValueError(f"model name {name!r} must be printable ASCII without spaces or dots (it is part of ZeroMQ topics)")


def schema_from_model(model: nn.Module, name: str, depths: Optional[Sequence[int]] = None) -> Dict:
    """The protocol schema of `model`: {"model", "layers": [{"name", "filters", "depth"}], "fingerprint"}.

    Layer names are the conv weight's parameter name without ".weight" (e.g. "layer1.0.conv1").
    `depth` defaults to the layer's position; pass `depths` to group layers (e.g. by ResNet stage).
    """
    validate_model_name(name)
    convs = conv_weights(model)
    if not convs:
        raise ValueError("model has no 4-D conv weights; nothing to monitor")
    if depths is not None and len(depths) != len(convs):
        raise ValueError(f"depths has {len(depths)} entries for {len(convs)} conv layers")
    layers = []
    for i, (pname, w) in enumerate(convs):
        layers.append({"name": _layer_name(pname), "filters": int(w.shape[0]),
                       "depth": int(depths[i]) if depths is not None else i})
    schema = {"model": name, "layers": layers}
    schema["fingerprint"] = format(schema_fingerprint(schema), "016x")
    return schema


def schema_fingerprint(schema: Dict) -> int:
    """FNV-1a 64 over: model UTF-8, 0x00, then per layer: name UTF-8, 0x00, decimal filters, 0x00."""
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
