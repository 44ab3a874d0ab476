import json

from saliency_tap import filter_count, layer_offsets, locate, schema_fingerprint, schema_from_model
from saliency_tap.schema import schema_json


def test_fingerprint_matches_swift_vector():
    # Swift's ModelSchema.fingerprint for model "m", layers a:3, b:5 (Tests/CoreTests/ModelSchemaTests.swift).
    s = {"model": "m", "layers": [{"name": "a", "filters": 3}, {"name": "b", "filters": 5}]}
    assert schema_fingerprint(s) == 0xEB102410212D9B2D


def test_fingerprint_ignores_depth_and_existing_fingerprint():
    a = {"model": "m", "layers": [{"name": "a", "filters": 3, "depth": 7}, {"name": "b", "filters": 5}]}
    b = dict(a, fingerprint="0000000000000000")
    assert schema_fingerprint(a) == schema_fingerprint(b) == 0xEB102410212D9B2D


def test_schema_from_model_parameter_order_includes_1x1_excludes_bn_fc(tiny_model):
    s = schema_from_model(tiny_model, "tiny")
    assert [l["name"] for l in s["layers"]] == ["conv1", "conv2", "down"]
    assert [l["filters"] for l in s["layers"]] == [3, 5, 5]
    assert [l["depth"] for l in s["layers"]] == [0, 1, 2]
    assert s["fingerprint"] == format(schema_fingerprint(s), "016x")
    assert filter_count(s) == 13
    assert layer_offsets(s) == [0, 3, 8, 13]
    assert locate(s, 0) == (0, 0) and locate(s, 3) == (1, 0) and locate(s, 12) == (2, 4)
    wire = json.loads(schema_json(s))
    assert wire["fingerprint"] == s["fingerprint"]


def test_bad_model_names_rejected(tiny_model):
    import pytest
    for bad in ["", "a.b", "a b", "x" * 129]:
        with pytest.raises(ValueError):
            schema_from_model(tiny_model, bad)
