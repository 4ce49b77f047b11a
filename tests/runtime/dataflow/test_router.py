import random

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


def test_a_revived_replica_is_picked_again_from_a_fresh_load():
    r = Router(2, "least_loaded")
    r.observe_load(0, 9)  # what it reported before it died
    r.mark_dead(0)
    assert {r.pick({}) for _ in range(4)} == {1}
    r.revive(0)  # restarted: it holds nothing the router knows of; its old load must not starve it
    assert r.dead == set() and r.pick({}) == 0


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


@pytest.mark.parametrize("policy", ["least_loaded", "prefix", "sticky", "image"])
def test_split_reads_columns_and_routes_as_pick_does(policy):
    """`split` reads the routing column from its Arrow buffers; it must send every row where
    `pick` sends the same row as a dict, also for a sliced batch and null or empty lists."""
    rng = random.Random(1)
    shared = list(range(40))
    rows = []
    for i in range(40):
        ids = shared[: rng.randrange(0, 40)] + [rng.randrange(100, 200) for _ in range(rng.randrange(0, 20))]
        images = None if i % 3 == 0 else ([] if i % 3 == 1 else [bytes([i % 5]) * 7])
        rows.append({"request_id": f"r{i}", "prompt_token_ids": ids if i % 7 else None, "images": images})
    schema = pa.schema([("request_id", pa.string()), ("prompt_token_ids", pa.list_(pa.int32())),
                        ("images", pa.list_(pa.binary()))])
    batch = pa.RecordBatch.from_pylist(rows, schema=schema).slice(3, 30)
    columnar, by_row = Router(3, policy, block_size=4), Router(3, policy, block_size=4)
    parts = columnar.split(batch)
    expected: dict[int, list[str]] = {}
    for row in batch.to_pylist():
        expected.setdefault(by_row.pick(row), []).append(row["request_id"])
    assert {r: p.column("request_id").to_pylist() for r, p in parts.items()} == expected
    assert columnar.loads == by_row.loads and columnar.prefix_hits == by_row.prefix_hits
