"""One error-row shape for every edge: whichever schema a failed request goes out on, its row
is valid Arrow of that schema, names the request and the reason, and (on the sink's edge)
fails the request exactly once."""

from __future__ import annotations

import pytest

from tideflow.runtime.dataflow.collector import OutputCollector, RequestError
from tideflow.runtime.edges.error_rows import error_row
from tideflow.runtime.edges.rows import to_batch
from tideflow.runtime.edges.schemas import OUTPUTS, PREFILLED, TOKENIZED, TOKENS


@pytest.mark.parametrize("schema", [TOKENIZED, PREFILLED, TOKENS, OUTPUTS], ids=["tokenized", "prefilled", "tokens", "outputs"])
def test_error_row_fits_every_edge_schema(schema):
    (row,) = to_batch([error_row(schema, "r1", "prompt: the prompt is empty", index=1, seq=0, producer=2)], schema).to_pylist()
    assert row["request_id"] == "r1" and row["error"] == "prompt: the prompt is empty"
    for key, value in {"index": 1, "finished": True, "finish_reason": "error", "producer": 2}.items():
        if key in schema.names:
            assert row[key] == value


def test_the_sink_fails_an_error_row_once():
    c = OutputCollector()
    c.register("r1", None, 1)
    failed = to_batch([error_row(OUTPUTS, "r1", "no such image")], OUTPUTS)
    assert c.add(failed) == {"r1"}
    with pytest.raises(RequestError, match="no such image"):
        c.pop("r1")
    assert c.add(failed) == set()  # a replayed copy changes nothing
