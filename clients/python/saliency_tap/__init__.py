"""saliency-tap: the Python producer for saliencyd (docs/protocol.md, docs/tap.md)."""
from .client import AlertSubscriber, QueryClient, QueryError
from .publisher import Publisher, Tap
from .recorder import Recorder, load_feed
from .saliency import TARGET_PREDICTED, TARGET_TRUE, SaliencyBatch, SaliencyComputer
from .schema import conv_weights, filter_count, layer_offsets, locate, schema_fingerprint, schema_from_model
from .wire import HEADER_FORMAT, Header, pack_header, unpack_header

__all__ = [
    "AlertSubscriber", "QueryClient", "QueryError", "Publisher", "Tap", "Recorder", "load_feed",
    "TARGET_PREDICTED", "TARGET_TRUE", "SaliencyBatch", "SaliencyComputer", "conv_weights", "filter_count",
    "layer_offsets", "locate", "schema_fingerprint", "schema_from_model", "HEADER_FORMAT", "Header",
    "pack_header", "unpack_header",
]
__version__ = "0.1.0"
