"""`tideflow bench graph --graph moe`: the dispatch figures of the timed run alone, and the
table. (The deployed comparison itself is run by hand: two graphs cost more than a unit test may.)"""

from __future__ import annotations

from tideflow.bench.moe_graph import _timed_dispatch, format_moe_table


def _stats(dispatches, actor_calls, dispatch_ms, compute_ms):
    return {"expert_dispatches": dispatches, "expert_actor_calls": actor_calls, "expert_tokens": [[1, 2]],
            "expert_dispatch_ms_per_layer": dispatch_ms, "expert_compute_ms_per_layer": compute_ms,
            "expert_overhead_ms_per_layer": dispatch_ms - compute_ms}


def test_timed_dispatch_subtracts_the_warm_up_calls():
    # warm-up: 4 calls of 10 ms (6 compute); then 6 more calls of 5 ms (2 compute) -> 10 calls averaging 7 ms
    d = _timed_dispatch(_stats(4, 8, 10.0, 6.0), _stats(10, 20, 7.0, 3.6))
    assert d["layer_dispatches"] == 6 and d["actor_calls_per_dispatch"] == 2.0
    assert abs(d["dispatch_ms_per_layer"] - 5.0) < 1e-9 and abs(d["compute_ms_per_layer"] - 2.0) < 1e-9
    assert abs(d["overhead_ms_per_layer"] - 3.0) < 1e-9
    assert _timed_dispatch({}, {"num_requests_running": 0}) == {}  # the colocated engine has no expert actors


def test_table_shows_dispatch_only_for_the_moe_graph():
    result = {"systems": {
        "colocated": {"output_tok_s": 100.0, "ratio_vs_colocated": 1.0, "same_tokens_as_colocated": True},
        "moe-2": {"output_tok_s": 50.0, "ratio_vs_colocated": 0.5, "same_tokens_as_colocated": True,
                  "dispatch_ms_per_layer": 5.0, "compute_ms_per_layer": 2.0, "overhead_ms_per_layer": 3.0},
    }}
    lines = format_moe_table(result).splitlines()
    assert lines[2].split()[-3:] == ["-", "-", "-"] and lines[3].split()[-3:] == ["5.00", "2.00", "3.00"]
