"""The autoscaling policy: queue depth and KV usage decide, within min and max replicas."""

from __future__ import annotations

import pytest

from tideflow.runtime.dataflow.rescale import AutoscalePolicy


def _stats(*loads, kv=0.0):
    return [{"load": load, "inbox": 0, "kv_cache_usage_perc": kv} for load in loads]


def test_policy_scales_on_queue_depth_and_kv_usage_within_bounds():
    policy = AutoscalePolicy(min_replicas=2, max_replicas=4, target_queue=8, max_kv_usage=0.8)
    assert policy.decide(_stats(10, 12)) == 3  # queues deeper than the target
    assert policy.decide(_stats(3, 3, kv=0.9)) == 3  # short queues but the KV cache is full
    assert policy.decide(_stats(20, 20, 20, 20)) == 4  # never past max
    assert policy.decide(_stats(1, 0, 0)) == 2  # idle: down by one
    assert policy.decide(_stats(0, 0)) == 2  # never below min
    assert policy.decide(_stats(5, 5, 5)) == 3  # in the band: unchanged
    assert policy.decide(_stats(1, 1, 1, kv=0.5)) == 3  # short queues, KV half used: no scale-down


@pytest.mark.parametrize(
    "kwargs, field",
    [({"min_replicas": 0}, "min_replicas"), ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
     ({"target_queue": 0}, "target_queue"), ({"max_kv_usage": 1.5}, "max_kv_usage")],
)
def test_policy_rejects_bad_bounds(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AutoscalePolicy(**kwargs)
