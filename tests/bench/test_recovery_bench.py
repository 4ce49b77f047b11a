"""`tideflow bench recovery`: how a restart's time is split into its parts."""

from __future__ import annotations

import math

import pytest

from tideflow.bench.recovery import startup_parts


def test_startup_parts_split_the_restart_and_sum_to_it():
    startup = {"process_at": 100.5, "init_at": 101.0, "role_import_s": 2.0, "role_init_s": 1.25}
    parts = startup_parts(startup, killed_at=100.0, restart=5.0)
    assert parts == {"spawn": 0.5, "worker start": 0.5, "role imports": 2.0, "model load": 1.25, "restore + rest": 0.75}
    assert sum(parts.values()) == pytest.approx(5.0)


def test_a_prestarted_worker_counts_from_the_kill_not_from_its_start():
    startup = {"process_at": 99.0, "init_at": 100.25, "role_import_s": 2.0, "role_init_s": 1.0}
    parts = startup_parts(startup, killed_at=100.0, restart=4.0)
    assert parts["spawn"] == 0 and parts["worker start"] == 0.25 and sum(parts.values()) == pytest.approx(4.0)


def test_without_a_process_time_the_unknown_parts_are_nan_and_the_rest_still_known():
    startup = {"process_at": None, "init_at": 101.0, "role_import_s": 2.0, "role_init_s": 1.0}
    parts = startup_parts(startup, killed_at=100.0, restart=5.0)
    assert math.isnan(parts["spawn"]) and math.isnan(parts["worker start"])
    assert parts["restore + rest"] == pytest.approx(1.0)


def test_gaps_are_taken_within_each_stream_and_p99_is_a_nearest_rank():
    from tideflow.bench.recovery import percentile, stream_gaps

    stamps = [[0.0, 0.1, 0.3], [5.0], [1.0, 3.5]]
    assert stream_gaps(stamps) == pytest.approx([0.1, 0.2, 2.5])  # never across two streams
    assert percentile([], 99) == 0.0
    assert percentile(list(range(1, 101)), 99) == 99 and percentile(list(range(1, 101)), 100) == 100
    assert percentile([0.5], 50) == 0.5
