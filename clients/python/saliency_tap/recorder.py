"""Recorded feeds: `<prefix>.npy` (float32 [rows, K]), `<prefix>.schema.json`, `<prefix>.meta.json`.

meta.json holds per-row columns of equal length: "predicted", "target", "target_kind", "confidence",
and any extra columns the caller adds (e.g. "label", the true label even when the loss used the
prediction). The daemon can replay the .npy as a reference set; `saliency-tap publish-npy` replays it
over the wire.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from .batch import SaliencyBatch
from .schema import filter_count, schema_fingerprint


class Recorder:
    def __init__(self, prefix: str, schema: Dict):
        self.prefix = prefix
        self.schema = dict(schema)
        self.schema["fingerprint"] = format(schema_fingerprint(schema), "016x")
        self.K = filter_count(schema)
        self._rows: List[np.ndarray] = []
        self._meta: Dict[str, list] = {"predicted": [], "target": [], "target_kind": [], "confidence": []}
        self._extra: Dict[str, list] = {}

    def __len__(self) -> int:
        return sum(r.shape[0] for r in self._rows)

    def append(self, rows, predicted=None, target=None, target_kind=0, confidence=None, **extra) -> None:
        """Append rows [n, K] with optional per-row metadata (scalars or length-n sequences)."""
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.shape[1] != self.K:
            raise ValueError(f"rows have {rows.shape[1]} columns; the schema has {self.K} filters")
        n = rows.shape[0]

        def col(v, default, cast):
            if v is None:
                return [default] * n
            a = np.broadcast_to(np.asarray(v), (n,))
            return [cast(t) for t in a]

        self._rows.append(rows.copy())
        self._meta["predicted"] += col(predicted, -1, int)
        self._meta["target"] += col(target, -1, int)
        self._meta["target_kind"] += col(target_kind, 0, int)
        self._meta["confidence"] += col(confidence, float("nan"), float)
        before = len(self) - n
        for k, v in extra.items():
            lst = self._extra.setdefault(k, [None] * before)
            vals = np.broadcast_to(np.asarray(v), (n,)).tolist()
            lst += vals
        for k, lst in self._extra.items():
            if k not in extra:
                lst += [None] * n

    def append_batch(self, batch: SaliencyBatch, **extra) -> None:
        self.append(batch.saliency, batch.predicted, batch.target, batch.target_kind, batch.confidence, **extra)

    def save(self) -> Tuple[str, str, str]:
        """Write the three files; returns their paths."""
        d = os.path.dirname(self.prefix)
        if d:
            os.makedirs(d, exist_ok=True)
        rows = np.concatenate(self._rows) if self._rows else np.zeros((0, self.K), np.float32)
        paths = (self.prefix + ".npy", self.prefix + ".schema.json", self.prefix + ".meta.json")
        np.save(paths[0], rows.astype(np.float32))
        with open(paths[1], "w") as f:
            json.dump(self.schema, f, indent=1)
            f.write("\n")
        meta = dict(self._meta)
        meta["confidence"] = [None if c != c else round(c, 7) for c in meta["confidence"]]
        meta.update(self._extra)
        meta["rows"] = int(rows.shape[0])
        with open(paths[2], "w") as f:
            json.dump(meta, f, separators=(",", ":"))
            f.write("\n")
        return paths


def load_feed(prefix: str) -> Tuple[np.ndarray, Dict, Optional[Dict]]:
    """(rows float32 [n, K], schema, meta or None). Checks the width against the schema."""
    if prefix.endswith(".npy"):
        prefix = prefix[:-4]
    rows = np.load(prefix + ".npy")
    with open(prefix + ".schema.json") as f:
        schema = json.load(f)
    if rows.ndim != 2 or rows.shape[1] != filter_count(schema):
        raise ValueError(f"{prefix}.npy has shape {rows.shape}; schema has {filter_count(schema)} filters")
    meta = None
    if os.path.exists(prefix + ".meta.json"):
        with open(prefix + ".meta.json") as f:
            meta = json.load(f)
    return rows, schema, meta
