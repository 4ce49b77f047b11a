"""Every role's snapshot survives msgpack and a fresh instance restored from it continues
to the same tokens (structured-output requests too: their matchers are rebuilt from the
restored tokens); the checkpoint store keeps snapshots, completion markers and logs."""

from __future__ import annotations

import json

import msgpack
import pyarrow as pa
import pytest

from tideflow.graphs.builtin import colocated, disaggregated
from tideflow.runtime.recovery.checkpoint_store import CheckpointStore
from tideflow.runtime.dataflow.inprocess import InProcessGraph
from tideflow.runtime.dataflow.ingress import request_batch, request_row

from tests.graphs.parity import mixed_requests, reference_tokens


# four small integers: long enough (15+ tokens) to be cut by both restarts
SCHEMA = {"type": "object", "properties": {"v": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
                                                 "minItems": 4, "maxItems": 4}},
          "required": ["v"], "additionalProperties": False}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama")


def _restart(graph: InProcessGraph) -> InProcessGraph:
    """A fresh graph whose roles are restored from msgpack round trips of the old one's."""
    fresh = InProcessGraph(graph.graph)
    for stage, roles in graph.roles.items():
        for old, new in zip(roles, fresh.roles[stage]):
            state = msgpack.unpackb(msgpack.packb(old.snapshot(), use_bin_type=True), raw=False, strict_map_key=False)
            new.restore(state)
    fresh.collector = graph.collector
    fresh.routers = graph.routers
    graph.close()
    return fresh


@pytest.mark.parametrize("kind", ["colocated", "disaggregated-kv"])
def test_restored_roles_continue_to_the_same_tokens(model, kind):
    prompts, params = mixed_requests(512, count=6, seed=3)
    params = [p.replace(max_tokens=p.max_tokens + 6) for p in params]
    params[0] = params[0].replace(max_tokens=40, structured_outputs={"json": SCHEMA})  # greedy JSON
    params[1] = params[1].replace(max_tokens=40, temperature=1.0, seed=11, structured_outputs={"json": SCHEMA})
    reference = reference_tokens(model, prompts, params)
    if kind == "colocated":
        graph = colocated(model, dtype="float64", max_num_seqs=4)
    else:
        graph = disaggregated(model, dtype="float64", max_num_seqs=4, checkpoint_kv=kind.endswith("kv"))
    g = InProcessGraph(graph.compile())
    ids = [f"r{i}" for i in range(len(prompts))]
    rows = [request_row(rid, p, sp) for rid, p, sp in zip(ids, prompts, params)]
    for row, sp in zip(rows, params):
        g.collector.register(row["request_id"], None, sp.n)
    g._deliver(g.graph.source, request_batch(rows), None)
    restarts = 0
    passes = 0
    while g.collector.unfinished():
        assert g._pass(), "stalled"
        passes += 1
        if passes in (3, 9):  # snapshot and restore everything mid-flight, twice
            g = _restart(g)
            restarts += 1
    assert restarts >= 2
    out = [g.collector.pop(rid) for rid in ids]
    assert [o.outputs[0].token_ids for o in out] == reference
    assert all(len(json.loads(o.outputs[0].text)["v"]) == 4 for o in out[:2])


def test_store_snapshots_markers_logs_and_cleanup(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"))
    assert store.latest_complete() == 0
    store.write_snapshot(1, "decode-0", {"a": [1, 2], "b": b"x"})
    assert store.read_snapshot(1, "decode-0") == {"a": [1, 2], "b": b"x"}
    assert store.read_snapshot(1, "decode-1") is None
    assert store.latest_complete() == 0  # written but not complete
    store.mark_complete(1)
    store.write_snapshot(2, "decode-0", {"a": []})  # a checkpoint cut short: no marker
    assert store.latest_complete() == 1

    schema = pa.schema([("request_id", pa.string())])
    log = store.log_writer("decode-0", store.next_part("decode-0"))
    for epoch, rid in [(0, "a"), (0, "b"), (1, "c"), (2, "d")]:
        log.append(epoch, "prefill/0", pa.RecordBatch.from_pylist([{"request_id": rid}], schema=schema))
    again = store.log_writer("decode-0", store.next_part("decode-0"))  # a restarted incarnation
    again.append(1, "prefill/1", pa.RecordBatch.from_pylist([{"request_id": "e"}], schema=schema))
    entries = store.read_log("decode-0", from_epoch=1)
    assert [(e.epoch, e.sender, e.batch.column(0)[0].as_py()) for e in entries] == [
        (1, "prefill/0", "c"), (2, "prefill/0", "d"), (1, "prefill/1", "e")
    ]
    log.close()
    again.close()
    store.mark_complete(2)
    store.delete_before(2)
    assert store.checkpoints() == [(2, True)]
    assert [e for e, _, _ in store.log_parts("decode-0")] == [2]
    assert store.fire_once("kill") and not store.fire_once("kill")


def test_store_reads_a_torn_log_and_rejects_a_bad_dir(tmp_path):
    store = CheckpointStore(str(tmp_path))
    schema = pa.schema([("x", pa.int64())])
    log = store.log_writer("s-0", 0)
    log.append(0, "ingress", pa.RecordBatch.from_pylist([{"x": 1}], schema=schema))
    log.append(0, "ingress", pa.RecordBatch.from_pylist([{"x": 2}], schema=schema))
    (_, _, path), = store.log_parts("s-0")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-20])  # a crash in the middle of the last batch
    assert [e.batch.column(0)[0].as_py() for e in store.read_log("s-0", 0)] == [1]
    with pytest.raises(ValueError, match="checkpoint_dir"):
        CheckpointStore("")
    uri_store = CheckpointStore(f"file://{tmp_path}/viauri")
    uri_store.write_snapshot(3, "t-0", {"k": 1})
    assert uri_store.read_snapshot(3, "t-0") == {"k": 1}
