import struct

import pytest

from saliency_tap import HEADER_FORMAT, pack_header, unpack_header


def test_format_is_64_bytes():
    assert struct.calcsize(HEADER_FORMAT) == 64


def test_golden_bytes():
    h = pack_header(fingerprint=0xEB102410212D9B2D, producer_id=0x0102030405060708, sequence=42,
                    timestamp_ns=1_700_000_000_123_456_789, predicted=3, target=7, target_kind=1,
                    confidence=0.5, sample_id=0xDEADBEEF)
    expected = bytes.fromhex(
        "53414c50"            # magic SALP
        "0100"                # version 1
        "0300"                # flags: sample id + confidence
        "2d9b2d21102410eb"    # fingerprint LE
        "0807060504030201"    # producer id LE
        "2a00000000000000"    # sequence 42
        "15cd853dfe9c9717"    # 1700000000123456789 ns LE
        "03000000"            # predicted 3
        "07000000"            # target 7
        "01000000"            # target kind 1 + 3 reserved zero bytes
        "0000003f"            # confidence 0.5f
        "efbeadde00000000"    # sample id
    )
    assert h == expected


def test_round_trip_and_flags():
    h = pack_header(1, 2, 3, -4, -1, -1, 0)
    u = unpack_header(h)
    assert (u.fingerprint, u.producer_id, u.sequence, u.timestamp_ns, u.predicted, u.target, u.target_kind) == (1, 2, 3, -4, -1, -1, 0)
    assert u.flags == 0 and u.confidence is None and u.sample_id is None and u.version == 1
    u = unpack_header(pack_header(2**64 - 1, 5, 2**64 - 1, 10, 9, 9, 1, confidence=0.25))
    assert u.flags == 2 and u.confidence == 0.25 and u.sample_id is None
    assert u.fingerprint == 2**64 - 1 and u.sequence == 2**64 - 1


def test_malformed_rejected():
    h = pack_header(1, 2, 3, 4, 5, 6, 0)
    with pytest.raises(ValueError):
        unpack_header(h[:63])
    with pytest.raises(ValueError):
        unpack_header(b"XALP" + h[4:])
    with pytest.raises(ValueError):
        pack_header(1, 2, 3, 4, 5, 6, 2)
