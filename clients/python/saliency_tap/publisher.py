"""PUB side of the feed socket (protocol.md §1-2) and the `Tap` convenience."""
from __future__ import annotations

import json
import secrets
import time
from typing import Dict, Optional

import numpy as np
import zmq

from ._socket import SocketOwner
from .saliency import SaliencyBatch, SaliencyComputer
from .schema import filter_count, schema_fingerprint, schema_from_model, schema_json, validate_model_name
from .wire import pack_header


class Publisher(SocketOwner):
    """Publishes `schema.<model>` and `pred.<model>` messages.

    The socket is an XPUB (wire-compatible with PUB) so the publisher sees subscriptions: whenever a
    subscriber (a daemon) joins or reconnects, the schema is re-sent before the next prediction, in
    addition to the periodic re-send every `schema_interval` seconds and before the first prediction.
    The daemon's feed socket binds by default, so `connect=True` is the default here.

    Not thread-safe (a ZeroMQ socket belongs to one thread).
    """

    def __init__(self, endpoint: str, model: str, schema: Dict, connect: bool = True,
                 schema_interval: float = 10.0, producer_id: Optional[int] = None,
                 context: Optional[zmq.Context] = None, sndhwm: int = 100_000):
        validate_model_name(model)
        if schema.get("model") != model:
            raise ValueError(f"schema is for model {schema.get('model')!r}, publisher for {model!r}")
        self.model = model
        self.schema = schema
        self.fingerprint = schema_fingerprint(schema)
        if "fingerprint" in schema and int(schema["fingerprint"], 16) != self.fingerprint:
            raise ValueError("schema's fingerprint field does not match its layers")
        self.K = filter_count(schema)
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
        (self.socket.connect if connect else self.socket.bind)(endpoint)
        self._last_schema = None  # monotonic time of the last schema send
        self._schema_due = True   # a subscriber joined (or nothing sent yet): send before the next prediction
        self.subscriptions = 0

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
        return seq

    def publish_batch(self, batch: SaliencyBatch, sample_ids=None) -> None:
        for i in range(len(batch)):
            self.publish(batch.saliency[i], int(batch.predicted[i]), int(batch.target[i]), batch.target_kind,
                         float(batch.confidence[i]), None if sample_ids is None else int(sample_ids[i]))


class Tap:
    """Model + publisher: `tap.observe(x, y=None)` computes a batch's saliency and publishes every row."""

    def __init__(self, model, publisher: Publisher, computer: Optional[SaliencyComputer] = None):
        self.computer = computer or SaliencyComputer(model)
        if self.computer.K != publisher.K:
            raise ValueError(f"model has {self.computer.K} filters, publisher's schema {publisher.K}")
        self.publisher = publisher

    @classmethod
    def connect(cls, model, name: str, endpoint: str = "tcp://127.0.0.1:5560", **publisher_kwargs) -> "Tap":
        schema = schema_from_model(model, name)
        return cls(model, Publisher(endpoint, name, schema, **publisher_kwargs))

    def observe(self, x, y=None, sample_ids=None) -> SaliencyBatch:
        batch = self.computer.compute(x, y)
        self.publisher.publish_batch(batch, sample_ids)
        return batch
