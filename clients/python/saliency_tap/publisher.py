"""PUB side of the feed socket (protocol.md §1-2), with counters of what was published and dropped."""
from __future__ import annotations

import json
import secrets
import time
from typing import Dict, Optional

import numpy as np
import zmq

from ._socket import CurveArg, SocketOwner, curve_keys
from .batch import SaliencyBatch
from .schema import filter_count, schema_fingerprint, schema_json, schema_quantity, validate_model_name
from .wire import pack_header


class Publisher(SocketOwner):
    """Publishes `schema.<model>` and `pred.<model>` messages.

    The socket is an XPUB (wire-compatible with PUB) so the publisher sees subscriptions: whenever a
    subscriber (a daemon) joins or reconnects, the schema is re-sent before the next prediction, in
    addition to the periodic re-send every `schema_interval` seconds and before the first prediction.
    The daemon's feed socket binds by default, so `connect=True` is the default here.

    `curve`: for a daemon with `[security] curve = true`, `CurveKeys(...)` or
    `(server_cert_path, client_cert_path)` (ZeroMQ certificates from `saliencyctl keygen` or
    `zmq.auth.create_certificates`; docs/tap.md "CURVE").

    Not thread-safe (a ZeroMQ socket belongs to one thread).

    Counters (`metrics()`, `prometheus_text()`): every prediction offered to the producer ends in one
    outcome: "published" (sent with a sequence number), or one that never consumes a sequence number,
    so the daemon's gap counter never sees it: "sampled_out" and "rate_limited" (deliberately not
    monitored), "dropped_queue_full" (the tap's bounded queue was full: lost by the producer),
    "error" (saliency could not be computed or was invalid). The daemon's `gaps` therefore count only
    predictions that were sent and lost on the way (e.g. at the socket's high-water mark).
    """

    OUTCOMES = ("published", "sampled_out", "rate_limited", "dropped_queue_full", "error")

    def __init__(self, endpoint: str, model: str, schema: Dict, connect: bool = True,
                 schema_interval: float = 10.0, producer_id: Optional[int] = None,
                 context: Optional[zmq.Context] = None, sndhwm: int = 100_000, curve: CurveArg = None):
        validate_model_name(model)
        if schema.get("model") != model:
            raise ValueError(f"schema is for model {schema.get('model')!r}, publisher for {model!r}")
        self.model = model
        self.schema = schema
        self.fingerprint = schema_fingerprint(schema)
        if "fingerprint" in schema and int(schema["fingerprint"], 16) != self.fingerprint:
            raise ValueError("schema's fingerprint field does not match its layers")
        self.K = filter_count(schema)
        self.quantity = schema_quantity(schema)     # "saliency", or "taylor" when the schema says so
        self.producer_id = producer_id if producer_id is not None else secrets.randbits(64)
        self.sequence = 0
        self.schema_interval = schema_interval
        self._schema_bytes = schema_json(schema)
        self._pred_topic = f"pred.{model}".encode()
        self._schema_topic = f"schema.{model}".encode()
        self._ctx = context or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.socket.setsockopt(zmq.LINGER, 1000)
        keys = curve_keys(curve)
        if keys is not None:
            keys.apply(self.socket)
        (self.socket.connect if connect else self.socket.bind)(endpoint)
        self._last_schema = None  # monotonic time of the last schema send
        self._schema_due = True   # a subscriber joined (or nothing sent yet): send before the next prediction
        self.subscriptions = 0
        self.counters: Dict[str, int] = {k: 0 for k in self.OUTCOMES}

    # -- counters -----------------------------------------------------------------------------
    def count(self, outcome: str, n: int = 1) -> None:
        """Record `n` predictions that ended in `outcome` without being published."""
        if outcome not in self.counters:
            raise ValueError(f"outcome must be one of {self.OUTCOMES}, got {outcome!r}")
        self.counters[outcome] += int(n)

    @property
    def dropped(self) -> int:
        """Predictions the producer meant to publish but lost (queue full or error)."""
        return self.counters["dropped_queue_full"] + self.counters["error"]

    def metrics(self) -> Dict:
        return {"model": self.model, "producer_id": format(self.producer_id, "016x"),
                "next_sequence": self.sequence, **self.counters}

    def prometheus_text(self) -> str:
        """The counters in the Prometheus text exposition format (to serve from your own /metrics)."""
        lab = f'model="{self.model}",producer="{self.producer_id:016x}"'
        lines = ["# HELP saliency_tap_predictions_total Predictions offered to the tap, by outcome.",
                 "# TYPE saliency_tap_predictions_total counter"]
        lines += [f'saliency_tap_predictions_total{{{lab},outcome="{k}"}} {v}' for k, v in self.counters.items()]
        lines += ["# HELP saliency_tap_next_sequence Sequence number of the next published prediction.",
                  "# TYPE saliency_tap_next_sequence gauge", f"saliency_tap_next_sequence{{{lab}}} {self.sequence}"]
        return "\n".join(lines) + "\n"

    # -- schema -----------------------------------------------------------------------------
    def send_schema(self) -> None:
        self.socket.send_multipart([self._schema_topic, self._schema_bytes])
        self._last_schema = time.monotonic()
        self._schema_due = False

    def _drain_subscriptions(self) -> None:
        """Read subscription notices; a new subscription makes the schema due."""
        while True:
            try:
                msg = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscriptions += 1
                self._schema_due = True

    def wait_for_subscriber(self, timeout: float = 5.0) -> bool:
        """Block up to `timeout` s until some subscriber has subscribed (avoids the slow-joiner loss)."""
        if self.subscriptions:
            return True
        if self.socket.poll(int(timeout * 1000), zmq.POLLIN):
            self._drain_subscriptions()
        return self.subscriptions > 0

    def _maybe_schema(self) -> None:
        self._drain_subscriptions()
        if self._schema_due or time.monotonic() - self._last_schema >= self.schema_interval:
            self.send_schema()

    # -- predictions --------------------------------------------------------------------------
    def publish(self, saliency_row, predicted: int = -1, target: int = -1, target_kind: int = 0,
                confidence: Optional[float] = None, sample_id: Optional[int] = None) -> int:
        """Send one prediction; returns its sequence number. Validates the row at the edge."""
        row = np.ascontiguousarray(saliency_row, dtype="<f4").reshape(-1)
        if row.shape[0] != self.K:
            raise ValueError(f"row has {row.shape[0]} values; the schema has {self.K} filters")
        if not np.all(np.isfinite(row)):
            raise ValueError("row contains NaN or infinity (the daemon would reject it as non_finite)")
        if np.any(row < 0):
            raise ValueError("row contains negative values (saliency is a mean absolute gradient)")
        self._maybe_schema()
        seq = self.sequence
        header = pack_header(self.fingerprint, self.producer_id, seq, time.time_ns(), predicted, target,
                             target_kind, confidence, sample_id)
        self.socket.send_multipart([self._pred_topic, header, row.tobytes()], copy=False)
        self.sequence += 1
        self.counters["published"] += 1
        return seq

    def publish_batch(self, batch: SaliencyBatch, sample_ids=None) -> None:
        for i in range(len(batch)):
            conf = float(batch.confidence[i])
            self.publish(batch.saliency[i], int(batch.predicted[i]), int(batch.target[i]), batch.target_kind,
                         None if conf != conf else conf, None if sample_ids is None else int(sample_ids[i]))


def __getattr__(name):  # Tap lived here in 0.1; it needs torch, so it is imported on first use
    if name == "Tap":
        from .tap import Tap
        return Tap
    raise AttributeError(name)
