"""Expert placement: even runs, balanced packing with replicas of hot experts, input checks."""

from __future__ import annotations

import pytest

from tideflow.runtime.parallel.expert_placement import (
    balanced_placement,
    check_expert_actors,
    even_placement,
    replica_rows,
)


def _max_load(placement, load):
    return [max(per_actor) for per_actor in placement.actor_load(load)]


def test_even_placement_gives_contiguous_runs_differing_by_at_most_one():
    p = even_placement([0, 1, 3], num_experts=8, num_actors=3)
    assert p.layers == (0, 1, 3)
    assert p.experts_of(0) == {0: [0, 1, 2], 1: [0, 1, 2], 3: [0, 1, 2]}
    assert p.experts_of(1)[3] == [3, 4, 5] and p.experts_of(2)[3] == [6, 7]
    assert all(len(actors) == 1 for layer in p.holders for actors in layer)


def test_balanced_replicates_a_hot_expert_and_evens_the_load():
    skewed = [[800, 40, 30, 30, 30, 30, 20, 20], [10, 10, 10, 10, 10, 10, 10, 930]]
    even = even_placement([0, 1], 8, 4)
    bal = balanced_placement([0, 1], skewed, 4)
    assert bal != even and bal.holders != even.holders
    # the hot expert of each layer is held by several actors, each taking a share of its tokens
    assert len(bal.holders[0][0]) == 4 and len(bal.holders[1][7]) == 4
    assert bal.replica_of(1, 7, bal.holders[1][7][2]) == (2, 4)
    # every expert is held somewhere; every actor holds something
    for layer in bal.holders:
        assert all(actors for actors in layer)
        assert {a for actors in layer for a in actors} == set(range(4))
    # the busiest actor runs far fewer tokens than under even placement
    assert all(b < 0.5 * e for b, e in zip(_max_load(bal, skewed), _max_load(even, skewed)))
    total = sum(skewed[0])
    assert max(bal.actor_load(skewed)[0]) <= total / 4 + 40  # within one cold expert of the fair share


def test_balanced_without_hot_experts_packs_largest_first_and_is_deterministic():
    load = [5, 9, 1, 7, 3, 3]
    a = balanced_placement([2], load, 2)
    assert a == balanced_placement([2], [load], 2)  # one flat list applies to every layer
    assert all(len(actors) == 1 for actors in a.holders[0])  # nothing above the fair share of 14
    assert a.actor_load([load])[0] == [15, 13]
    assert a.experts_of(0) == {2: [1, 4, 5]} and a.experts_of(1) == {2: [0, 2, 3]}


def test_balanced_with_no_traffic_falls_back_to_even():
    assert balanced_placement([0], [[0, 0, 0, 0]], 2).holders == even_placement([0], 4, 2).holders


def test_replica_rows_split_an_expert_s_rows_into_near_equal_contiguous_parts():
    parts = [replica_rows(10, r, 3) for r in range(3)]
    assert parts == [(0, 3), (3, 6), (6, 10)]
    assert replica_rows(1, 0, 2) == (0, 0) and replica_rows(1, 1, 2) == (0, 1)


@pytest.mark.parametrize("actors", [0, 5, -1, 2.0, True])
def test_expert_actors_outside_one_to_num_experts_is_rejected(actors):
    with pytest.raises(ValueError, match="expert_actors"):
        check_expert_actors(actors, 4)


def test_a_dense_model_or_a_bad_trace_is_rejected_naming_the_option():
    with pytest.raises(ValueError, match="expert_actors: the model has no MoE layers"):
        check_expert_actors(1, 0)
    with pytest.raises(ValueError, match="expert_load must have 2 layers of 4 counts"):
        balanced_placement([0, 1], [[1, 2, 3, 4]] * 3, 2)
    with pytest.raises(ValueError, match="expert_load: counts must be numbers >= 0"):
        balanced_placement([0], [[1, -2, 3, 4]], 2)
