import pyarrow as pa
import pytest

from tideflow.runtime.dataflow.router import Router


def test_least_loaded_spreads_and_follows_reported_load():
    r = Router(3, "least_loaded")
    assert [r.pick({}) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    r.observe_load(0, 0)
    r.observe_load(1, 10)
    r.observe_load(2, 10)
    assert [r.pick({}) for _ in range(3)] == [0, 0, 0]


def test_prefix_routing_keeps_shared_prefixes_together_unless_imbalanced():
    r = Router(2, "prefix", block_size=4, imbalance=3)
    shared = list(range(100, 112))  # three full blocks
    first = r.pick({"prompt_token_ids": shared + [1]})
    assert all(r.pick({"prompt_token_ids": shared + [2, 3]}) == first for _ in range(3))
    assert r.prefix_hits == 3
    other = r.pick({"prompt_token_ids": list(range(500, 520))})
    assert other != first  # no shared prefix: least loaded
    # once the owner is far busier than the other replica, the prefix is not worth the queue
    r.observe_load(first, 50)
    r.observe_load(other, 0)
    assert r.pick({"prompt_token_ids": shared + [9]}) == other


def test_sticky_routing_is_stable_across_router_instances():
    a, b = Router(4, "sticky"), Router(4, "sticky")
    ids = [f"req-{i}" for i in range(50)]
    assert [a.pick({"request_id": i}) for i in ids] == [b.pick({"request_id": i}) for i in ids]
    assert len({a.pick({"request_id": i}) for i in ids}) == 4


def test_dead_replicas_are_skipped():
    r = Router(3, "least_loaded")
    r.mark_dead(0)
    assert 0 not in {r.pick({}) for _ in range(9)}
    s = Router(2, "sticky")
    s.mark_dead(1)
    assert {s.pick({"request_id": f"x{i}"}) for i in range(20)} == {0}


def test_split_groups_rows_by_replica():
    r = Router(2, "sticky")
    batch = pa.RecordBatch.from_pylist([{"request_id": f"r{i}", "v": i} for i in range(10)])
    parts = r.split(batch)
    assert sum(p.num_rows for p in parts.values()) == 10
    for replica, part in parts.items():
        assert all(r.pick({"request_id": rid}) == replica for rid in part.column("request_id").to_pylist())


def test_bad_policy_is_rejected():
    with pytest.raises(ValueError, match="routing policy"):
        Router(2, "random")
