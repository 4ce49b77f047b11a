"""Stage options are parsed once, by compile: a bad one fails compile naming the stage and the
option (before anything starts); every built-in graph compiles to typed `StageConfig`s, and
each role is built with its stage's."""

from __future__ import annotations

import pickle

import pytest

from tideflow.cli import main
from tideflow.config import EngineConfig, ExpertParallelConfig
from tideflow.graphs import Graph
from tideflow.graphs.builtin import colocated, disaggregated, moe, multimodal
from tideflow.runtime.dataflow.inprocess import InProcessGraph
from tideflow.runtime.dataflow.stage_config import StageConfig, StageOptions

from tests.graphs.test_compile import NODE, DummyDetok, DummyEngine, DummyTok


def _chat(engine_options: dict, tokenizer_options: dict | None = None) -> Graph:
    g = Graph("chat")
    tok = g.stage("tokenize", "tokenizer", num_cpus=0, options={"model": "/m"} if tokenizer_options is None else tokenizer_options)
    eng = g.stage("engine", "engine", options={"model": "/m", **engine_options})
    tok >> eng >> g.stage("detokenize", "detokenizer", num_cpus=0, options={"model": "/m"})
    return g


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (_chat({"max_num_seq": 4}), r"stage 'engine': unknown option 'max_num_seq'"),
        (_chat({"block_size": -1}), "stage 'engine': block_size must be positive, got -1"),
        (_chat({"max_num_seqs": 2.5}), "stage 'engine': option 'max_num_seqs' must be an integer, got 2.5"),
        (_chat({"expert_load": [[1]]}), "stage 'engine': expert options .* need expert_actors"),
        (_chat({}, {"model": "/m", "encoder_cache": 3}), "stage 'tokenize': unknown option 'encoder_cache'"),
        (_chat({}, {}), "stage 'tokenize': Tokenizer needs a 'model' option"),
    ],
)
def test_a_bad_option_fails_compile_naming_the_stage_and_the_option(graph, message):
    with pytest.raises(ValueError, match=message):
        graph.compile(NODE)


def test_a_bad_option_in_yaml_fails_tideflow_graph(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(_chat({"dtype": "float32", "kernel_backend": "cuda"}).to_yaml())
    assert main(["graph", str(path)]) == 2
    assert "stage 'engine': kernel_backend must be one of" in capsys.readouterr().err


def test_a_custom_role_gets_the_options_no_part_knows():
    g = Graph("custom")
    g.stage("tokenize", DummyTok, options={"model": "/m", "max_len": 128}) >> g.stage("engine", DummyEngine)
    g.connect("engine", g.stage("detokenize", DummyDetok, options={"window": 3}))
    compiled = g.compile(NODE)
    assert compiled.configs["tokenize"].extras == {"max_len": 128}
    assert compiled.configs["tokenize"].model.model == "/m"
    assert compiled.configs["engine"] == StageConfig()
    assert compiled.context("detokenize", 0).config.extras == {"window": 3}


def _builtin(name: str, tiny_model_dir) -> Graph:
    if name == "colocated":
        return colocated(tiny_model_dir("llama"), dtype="float32", max_num_seqs=4, num_threads=1)
    if name == "disaggregated":
        return disaggregated(tiny_model_dir("llama"), prefill=1, decode=1, dtype="float32", checkpoint_kv=True)
    if name == "multimodal":
        return multimodal(tiny_model_dir("llava"), dtype="float32", encoder_cache_size=7, block_size=4)
    return moe(tiny_model_dir("mixtral"), expert_actors=2, expert_placement="balanced", dtype="float32")


@pytest.mark.parametrize("name", ["colocated", "disaggregated", "multimodal", "moe"])
def test_every_builtin_graph_compiles_to_typed_configs(name, tiny_model_dir):
    compiled = _builtin(name, tiny_model_dir).compile(NODE)
    for spec in compiled.stages:
        config = compiled.configs[spec.name]
        assert isinstance(config, StageConfig) and isinstance(config.engine, EngineConfig)
        assert config.extra == () and config.model.dtype == ("float32" if spec.name not in ("tokenize", "detokenize") else "auto")
        context = compiled.context(spec.name, 0)
        assert (context.graph, context.stage, context.config) == (compiled.name, spec.name, config)
        assert pickle.loads(pickle.dumps(context)) == context  # what a stage actor is sent
    configs = compiled.configs
    if name == "colocated":
        assert configs["engine"].engine.scheduler.max_num_seqs == 4 and configs["engine"].max_pending == 8
        assert configs["engine"].stage == StageOptions(num_threads=1)
    elif name == "disaggregated":
        assert configs["decode"].stage.checkpoint_kv and configs["prefill"].stage.checkpoint_kv
    elif name == "multimodal":
        assert configs["encode"].stage.encoder_cache_size == 7 and configs["engine"].kv_block_size == 4
    else:
        assert configs["engine"].experts == ExpertParallelConfig(2, "balanced")
        assert configs["tokenize"].experts is None


def test_each_role_is_built_with_its_stage_config(tiny_model_dir):
    compiled = disaggregated(tiny_model_dir("llama"), prefill=1, decode=2, dtype="float32", max_num_seqs=3,
                             checkpoint_kv=True).compile(NODE)
    graph = InProcessGraph(compiled)
    try:
        for stage, roles in graph.roles.items():
            assert [r.context.config for r in roles] == [compiled.configs[stage]] * len(roles)
            assert [r.context.replica for r in roles] == list(range(len(roles)))
        assert all(r.capacity == 6 and r.checkpoint_kv for r in graph.roles["decode"])
        assert graph.roles["prefill"][0].capacity == 6
    finally:
        graph.close()
