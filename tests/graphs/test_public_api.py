"""`tideflow.graphs`' public API: the built-in graphs by function and by name, and a light import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tideflow.graphs as graphs
from tideflow.graphs import builtin
from tideflow.serve import ServeConfig
from tideflow.serve.deployment import build_graph


def test_importing_graphs_loads_neither_torch_nor_ray():
    code = (
        "import sys\n"
        "from tideflow.graphs import colocated, disaggregated, moe, multimodal, BUILTIN_GRAPHS\n"
        "heavy = [m for m in ('torch', 'ray', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_built_in_graphs_are_public_and_registered_by_name():
    for name in ("colocated", "disaggregated", "moe", "multimodal"):
        assert name in graphs.__all__
        assert getattr(graphs, name) is getattr(builtin, name)
        assert graphs.BUILTIN_GRAPHS[name] is getattr(builtin, name)
        assert graphs.builtin_graph(name) is getattr(builtin, name)
    assert sorted(graphs.BUILTIN_GRAPHS) == ["colocated", "disaggregated", "moe", "multimodal"]
    with pytest.raises(ValueError, match="unknown built-in graph 'ring'; known: colocated, disaggregated, moe, multimodal"):
        graphs.builtin_graph("ring")
    with pytest.raises(TypeError):
        graphs.BUILTIN_GRAPHS["ring"] = graphs.colocated  # the registry is read-only


def test_serve_picks_every_built_in_graph_by_name(tiny_model_dir):
    dense, experts = tiny_model_dir("llama"), tiny_model_dir("mixtral")
    for name, model, first in [("colocated", dense, "engine"), ("disaggregated", dense, "prefill"),
                               ("multimodal", dense, "encode"), ("moe", experts, "engine")]:
        config = ServeConfig(model=model, graph=name, engine_options={"dtype": "float32"}).resolved()
        assert config.graph_is_builtin
        graph = build_graph(config, None, f"{name}-r1")
        assert graph.name == f"{name}-r1"
        assert [s.name for s in graph.stages][:2] == ["tokenize", first]
    with pytest.raises(ValueError, match=r"graph must be one of \('colocated', 'disaggregated', 'moe', 'multimodal'\)"):
        ServeConfig(graph="ring")
