"""The 64-byte little-endian prediction header (protocol.md §2)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

HEADER_FORMAT = "<4sHHQQQqiiB3xfQ"
HEADER = struct.Struct(HEADER_FORMAT)
assert HEADER.size == 64
MAGIC = b"SALP"
VERSION = 1
FLAG_SAMPLE_ID = 1 << 0
FLAG_CONFIDENCE = 1 << 1


@dataclass(frozen=True)
class Header:
    fingerprint: int
    producer_id: int
    sequence: int
    timestamp_ns: int
    predicted: int
    target: int
    target_kind: int
    confidence: Optional[float] = None
    sample_id: Optional[int] = None
    version: int = VERSION
    flags: int = 0


def pack_header(fingerprint: int, producer_id: int, sequence: int, timestamp_ns: int,
                predicted: int, target: int, target_kind: int,
                confidence: Optional[float] = None, sample_id: Optional[int] = None) -> bytes:
    """64 header bytes. Flags are derived: bit 0 iff sample_id is given, bit 1 iff confidence is."""
    if target_kind not in (0, 1):
        raise ValueError(f"target_kind must be 0 (predicted) or 1 (true label), got {target_kind}")
    flags = (FLAG_SAMPLE_ID if sample_id is not None else 0) | (FLAG_CONFIDENCE if confidence is not None else 0)
    return HEADER.pack(MAGIC, VERSION, flags, fingerprint & 0xFFFFFFFFFFFFFFFF, producer_id & 0xFFFFFFFFFFFFFFFF,
                       sequence & 0xFFFFFFFFFFFFFFFF, int(timestamp_ns), int(predicted), int(target), int(target_kind),
                       float(confidence) if confidence is not None else 0.0,
                       int(sample_id) if sample_id is not None else 0)


def unpack_header(data: bytes) -> Header:
    """Parse 64 header bytes; raises ValueError on a wrong size or magic (the daemon's malformed_frame)."""
    if len(data) != HEADER.size:
        raise ValueError(f"header must be {HEADER.size} bytes, got {len(data)}")
    magic, version, flags, fp, pid, seq, ts, pred, tgt, kind, conf, sid = HEADER.unpack(data)
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r}, expected {MAGIC!r}")
    return Header(fingerprint=fp, producer_id=pid, sequence=seq, timestamp_ns=ts, predicted=pred, target=tgt,
                  target_kind=kind, confidence=conf if flags & FLAG_CONFIDENCE else None,
                  sample_id=sid if flags & FLAG_SAMPLE_ID else None, version=version, flags=flags)
