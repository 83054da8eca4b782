"""The typed record: sections with to_dict/from_dict, a schema version, lossless round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ncbounds.report.record import SCHEMA_VERSION, EvalRecord, LayerRecord, ModelInfo

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "demo-records" / "records"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_round_trip_of_a_version_1_record_is_lossless(path):
    data = json.loads(path.read_text())
    record = EvalRecord.from_dict(data)
    assert record.schema_version == 1  # written before the field existed
    out = record.to_dict()
    assert out.pop("schema_version") == 1 and out == data  # every key kept, "batch" included
    assert isinstance(record.model, ModelInfo) and isinstance(record.layers["penultimate"], LayerRecord)
    assert record.layers["penultimate"]["metrics"]["train"]["nc1"] == data["layers"]["penultimate"]["metrics"]["train"]["nc1"]
    assert [b["name"] for b in record.bounds] == [b["name"] for b in data["bounds"]]


def test_absent_keys_stay_absent_and_unknown_keys_survive():
    model = ModelInfo.from_dict({"arch": "linear head from features file", "num_classes": 4, "future_key": [1, 2]})
    assert model.to_dict() == {"arch": "linear head from features file", "num_classes": 4, "future_key": [1, 2]}
    assert "arch_kwargs" not in model and model.get("arch_kwargs") is None and model["future_key"] == [1, 2]
    with pytest.raises(KeyError):
        model["num_params"]
    record = EvalRecord(checkpoint=None, model=None, data={"spec": "x"}, errors={"test": None}, layers={},
                        layerwise={"epsilon": 0.01}, notes=["n"])
    out = record.to_dict()
    assert out["schema_version"] == SCHEMA_VERSION == 2 and out["errors"] == {"test": None} and out["checkpoint"] is None
    assert json.loads(record.to_json()) == out
    assert not hasattr(record, "context")
