"""`build_app`'s arguments and the graph each replica builds from them (no Ray needed)."""

from __future__ import annotations

import pytest

from tideflow.graphs import Graph
from tideflow.serve import ServeConfig
from tideflow.serve.deployment import build_graph


def test_args_are_checked_and_resolved(tiny_model_dir):
    model = tiny_model_dir("llama")
    config = ServeConfig.from_args(
        {"model": model, "num_replicas": "2", "max_queued_requests": "0", "health_check_period_s": "0.5"}
    ).resolved()
    assert (config.num_replicas, config.max_queued_requests, config.served_model_name) == (2, 0, "llama")
    assert (config.health_check_period_s, config.health_check_timeout_s) == (0.5, 30.0)
    assert ServeConfig.from_args({"model": model, "served_model_name": "m"}).resolved().served_model_name == "m"
    assert ServeConfig.from_args({"model": model}).tool_call_parser is None
    assert ServeConfig.from_args({"tool_call_parser": "llama3_json"}).tool_call_parser == "llama3_json"
    assert config.migration_limit is None  # each stage's own, else the default
    assert ServeConfig.from_args({"model": model, "migration_limit": "0"}).migration_limit == 0  # off
    for bad, needle in [
        ({"modle": model}, "unknown serve argument"),
        ({"graph": "ring"}, "graph must be"),
        ({"max_ongoing_requests": 0}, "max_ongoing_requests"),
        ({"num_replicas": True}, "num_replicas"),
        ({"engine_options": {"dtpye": "float32"}}, "dtpye"),
        ({"engine_options": "fast"}, "engine_options"),
        ({"health_check_period_s": 0}, "health_check_period_s must be a positive number"),
        ({"health_check_timeout_s": "soon"}, "health_check_timeout_s"),
        ({"health_check_period_s": float("inf")}, "health_check_period_s"),
        ({"tool_call_parser": "mistral"}, "tool_call_parser must be one of"),
        ({"migration_limit": -1}, "migration_limit must be an integer >= 0"),
        ({"migration_limit": 1.5}, "migration_limit must be an integer >= 0"),
    ]:
        with pytest.raises(ValueError, match=needle):
            ServeConfig.from_args(bad)
    with pytest.raises(ValueError, match="no/such"):
        ServeConfig(model="/no/such/model").resolved()


def test_each_replica_builds_its_own_named_graph(tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    config = ServeConfig(model=model, graph="disaggregated", graph_options={"prefill": 1, "decode": 3},
                         engine_options={"dtype": "float32"}).resolved()
    graph = build_graph(config, None, "disaggregated-r1")
    assert graph.name == "disaggregated-r1"
    assert [(s.name, s.replicas) for s in graph.stages] == [("tokenize", 1), ("prefill", 1), ("decode", 3),
                                                            ("detokenize", 1)]
    assert graph.spec("decode").options_dict["dtype"] == "float32"
    # a YAML graph keeps its own models unless `model` replaces them
    text = _chat_yaml("/models/a")
    path = tmp_path / "chat.yaml"
    path.write_text(text)
    own = ServeConfig(graph=str(path)).resolved()
    assert own.model is None and own.served_model_name == "a"
    data = Graph.from_yaml(path).to_dict()
    assert build_graph(own, data, "chat-r2").spec("engine").options_dict["model"] == "/models/a"
    replaced = ServeConfig(graph=str(path), model=model).resolved()
    graph = build_graph(replaced, data, "chat-r3")
    assert graph.name == "chat-r3" and {s.options_dict["model"] for s in graph.stages} == {model}
    with pytest.raises(ValueError, match="built-in graphs"):
        ServeConfig(graph=str(path), engine_options={"dtype": "float32"})


def _chat_yaml(model: str) -> str:
    return f"""
name: chat
stages:
  - {{name: tokenize, actor: tokenizer, num_cpus: 0, options: {{model: {model}}}}}
  - {{name: engine, actor: engine, options: {{model: {model}, dtype: float32}}}}
  - {{name: detokenize, actor: detokenizer, num_cpus: 0, options: {{model: {model}}}}}
edges:
  - tokenize >> engine >> detokenize
"""
