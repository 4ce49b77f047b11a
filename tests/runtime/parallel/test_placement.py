"""A deploy never hangs on resources (docs/reliability.md fault 11): a graph asking, in all, for
more than the cluster has is refused before anything starts, naming the stage; a replica that
waits for resources other actors hold stops the deploy after a bounded wait, naming it; and
the expert actors of a MoE engine ask for a fraction of a CPU, so a few fit a 2-core machine."""

from __future__ import annotations

import time

import pytest

from tideflow.graphs.builtin import colocated, moe
from tideflow.runtime.dataflow.executor import NAMESPACE
from tideflow.runtime.parallel.placement import PlacementError, check_capacity, stage_demand


def _demands(graph):
    compiled = graph.compile(cluster=[{"CPU": 64.0, "GPU": 8.0}])
    return [stage_demand(spec, compiled.configs[spec.name].experts) for spec in compiled.stages]


def test_three_expert_actors_fit_two_cpus_by_default_and_a_whole_cpu_each_does_not(tiny_model_dir):
    path = tiny_model_dir("mixtral")
    check_capacity("moe", _demands(moe(path, expert_actors=3)), {"CPU": 2.0})  # 1 + 3 x 0.25
    with pytest.raises(PlacementError) as err:
        check_capacity("moe", _demands(moe(path, expert_actors=3, expert_cpus=1.0)), {"CPU": 2.0})
    message = str(err.value)
    assert "its stages ask for CPU=4 in all, but the cluster has CPU=2" in message
    assert "stage 'engine' asks CPU=4 (1 replica x CPU=1 + 3 expert actors x CPU=1)" in message
    assert "tokenize" not in message  # stages asking for nothing are not blamed


def test_demand_counts_replicas_shards_and_custom_resources(tiny_model_dir):
    path = tiny_model_dir("llama")
    (tok, eng, _) = _demands(colocated(path, replicas=3, num_cpus=0.5, num_gpus=0.0))
    assert tok.total == {} and eng.total == {"CPU": 1.5} and eng.how == "3 replicas x CPU=0.5"
    with pytest.raises(PlacementError, match=r"ask for CPU=1.5 in all, but the cluster has CPU=1\b"):
        check_capacity("g", [tok, eng], {"CPU": 1.0, "GPU": 4.0})
    check_capacity("g", [tok, eng], {"CPU": 1.5})
    with pytest.raises(PlacementError, match=r"ask for GPU=2 in all, but the cluster has GPU=0"):
        check_capacity("g", _demands(colocated(path, replicas=2, num_cpus=0, num_gpus=1.0)), {"CPU": 8.0})


def _absent(ray, name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return True
    return False


def test_a_graph_asking_more_than_the_cluster_fails_within_seconds(ray_session, tiny_model_dir):
    cluster = ray_session.cluster_resources()["CPU"]
    graph = colocated(tiny_model_dir("llama"), replicas=2, num_cpus=cluster / 2 + 0.5, name="too-big")
    start = time.monotonic()
    with pytest.raises(PlacementError) as err:
        graph.deploy()
    assert time.monotonic() - start < 10
    assert f"cluster has CPU={cluster:g}" in str(err.value) and "stage 'engine' asks" in str(err.value)
    assert _absent(ray_session, "too-big/engine/0") and _absent(ray_session, "too-big/collector")  # nothing started


def test_a_replica_waiting_for_resources_others_hold_times_out_naming_it(ray_session, tiny_model_dir):
    @ray_session.remote
    class Holder:
        def ready(self) -> bool:
            return True

    free = ray_session.available_resources().get("CPU", 0.0)
    holder = Holder.options(num_cpus=free).remote() if free else None
    try:
        if holder is not None:
            ray_session.get(holder.ready.remote())
        graph = colocated(tiny_model_dir("llama"), num_cpus=1.0, name="starved")
        start = time.monotonic()
        with pytest.raises(PlacementError) as err:
            graph.deploy(placement_timeout=1.0)
        assert time.monotonic() - start < 20
        assert "replica starved/engine/0 (asks CPU=1): not placed after 1 s" in str(err.value)
        assert "starved/tokenize" not in str(err.value)  # placed (it asks for no CPU), so not blamed
    finally:
        if holder is not None:
            ray_session.kill(holder)
    deadline = time.monotonic() + 10  # the deploy gave back what it had started
    while not _absent(ray_session, "starved/engine/0") and time.monotonic() < deadline:
        time.sleep(0.1)  # polling: ray.kill is asynchronous and nothing signals its end
    assert _absent(ray_session, "starved/engine/0") and _absent(ray_session, "starved/collector")
