"""SamplingParams survive the Arrow `sampling` struct of graph edges, structured outputs of
every kind included (a JSON string column)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tideflow.runtime.edges import schemas
from tideflow.sampling_params import SamplingParams

CONSTRAINTS = [
    None,
    {"json": {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}},
    {"json": '{"type": "array"}'},
    {"json_object": True},
    {"regex": r"\d{3}-[a-z]+"},
    {"choice": ["yes", "no", "don't know"]},
    {"grammar": 'start: "a" | "b"'},
]


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_params_round_trip_through_arrow(constraint):
    params = SamplingParams(seed=3, logit_bias={3: 1.5}, structured_outputs=constraint)
    (row,) = pa.array([schemas.params_to_row(params)], schemas.SAMPLING).to_pylist()
    back = schemas.row_to_params(row)
    assert back == params
    if constraint is not None and "json" in constraint and isinstance(constraint["json"], dict):
        assert list(back.structured_outputs.json["properties"]) == ["b", "a"]  # property order is kept
