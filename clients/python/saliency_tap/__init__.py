"""saliency-tap: the Python producer for saliencyd (docs/protocol.md, docs/tap.md).

The wire side (Publisher, QueryClient, AlertSubscriber, Recorder, schemas) needs only numpy and
pyzmq; the model side (SaliencyComputer, Tap, schema_from_model on a model) imports torch when first
used, so daemon-side tools can use this package without torch installed.
"""
from typing import TYPE_CHECKING

from .batch import TARGET_PREDICTED, TARGET_TRUE, SaliencyBatch
from ._socket import CurveKeys
from .client import AlertSubscriber, QueryClient, QueryError
from .publisher import Publisher
from .recorder import Recorder, load_feed
from .schema import (QUANTITIES, conv_weights, filter_count, layer_offsets, locate, monitored_units,
                     schema_fingerprint, schema_from_model, schema_quantity, unwrap_model)
from .wire import HEADER_FORMAT, Header, pack_header, unpack_header

if TYPE_CHECKING:
    from .saliency import SaliencyComputer, default_logits, shadow_copy
    from .tap import Tap

_LAZY = {"SaliencyComputer": "saliency", "default_logits": "saliency", "shadow_copy": "saliency", "Tap": "tap"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AlertSubscriber", "CurveKeys", "QueryClient", "QueryError", "Publisher", "Tap", "Recorder", "load_feed",
    "TARGET_PREDICTED", "TARGET_TRUE", "SaliencyBatch", "SaliencyComputer", "conv_weights", "filter_count",
    "layer_offsets", "locate", "monitored_units", "schema_fingerprint", "schema_from_model", "unwrap_model",
    "QUANTITIES", "schema_quantity",
    "default_logits", "shadow_copy", "HEADER_FORMAT", "Header", "pack_header", "unpack_header",
]
__version__ = "0.2.0"
