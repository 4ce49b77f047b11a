"""cluster.yaml is a valid `ray up` config for the cluster docs/cluster.md describes."""

from __future__ import annotations

import copy
import json
import pathlib
import tomllib

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema() -> dict:
    path = pathlib.Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_validates_against_the_schema_ray_ships(config, schema):
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs first: defaults filled, then checked


def test_the_schema_check_rejects_a_broken_copy(config, schema):
    """The check above can fail: a misspelt field and a worker count of the wrong type are caught."""
    for mutate in (lambda c: c.update(max_worker=4), lambda c: c["available_node_types"]["ray.worker.gpu"].update(min_workers="0")):
        broken = copy.deepcopy(config)
        mutate(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_head_and_gpu_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "GPU" not in head["resources"]  # models never land on the head node
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    assert all(0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"] for t in workers.values())
    assert config["provider"]["type"] in {"aws", "gcp", "azure"}


def test_every_node_installs_this_checkout_with_the_gpu_extra(config):
    mounts = config["file_mounts"]
    assert mounts == {"~/tideflow": "."}  # `ray up` runs from the repository root
    setup = "\n".join(config["setup_commands"])
    assert "torch==2.13.0" in setup and '-e "$HOME/tideflow[gpu]"' in setup
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert "gpu" in extras
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


def test_docs_walk_through_up_serve_request_down():
    text = (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")
    steps = ["ray up cluster.yaml", "tideflow serve --address auto", "/v1/completions", "ray down cluster.yaml"]
    positions = [text.find(s) for s in steps]
    assert all(p >= 0 for p in positions), dict(zip(steps, positions))
    assert positions == sorted(positions)


def test_the_gpu_graph_fits_the_cluster_and_not_a_cpu_one(config):
    """examples/gpu_graph.yaml (the graph docs/cluster.md serves) compiles against the nodes
    cluster.yaml can start, and is refused where no node has the GPU resources it names."""
    from tideflow.graphs import Graph

    graph = Graph.from_yaml(ROOT / "examples" / "gpu_graph.yaml")
    types = config["available_node_types"]
    head = {"CPU": 8, **types[config["head_node_type"]]["resources"]}
    workers = [dict(t["resources"]) for name, t in types.items() if name != config["head_node_type"] for _ in range(t["max_workers"])]
    compiled = graph.compile(cluster=[head, *workers])
    assert compiled is not None
    with pytest.raises(ValueError, match="gpu_node|GPU"):
        graph.compile(cluster=[head])
