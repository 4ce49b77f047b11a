"""`parse_stage_config`: a stage's flat options split into typed parts, each bad option a
ValueError naming the stage and the option; the result is frozen and travels by pickle."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from tideflow.config import EngineConfig, ExpertParallelConfig, engine_config
from tideflow.runtime.dataflow.stage_config import StageConfig, StageOptions, parse_stage_config


def test_the_options_split_into_their_parts():
    config = parse_stage_config(
        "engine",
        {"model": "/m", "dtype": "float32", "block_size": 8, "max_num_seqs": 4, "expert_actors": 2,
         "expert_load": [[1, 2], [3, 4]], "num_threads": 3, "max_pending": 5, "checkpoint_kv": True},
        extras=False,
    )
    assert config.engine == engine_config("/m", dtype="float32", block_size=8, max_num_seqs=4)
    assert config.experts == ExpertParallelConfig(2, load=((1, 2), (3, 4)))
    assert config.stage == StageOptions(num_threads=3, max_pending=5, checkpoint_kv=True)
    assert config.extra == () and config.model.model == "/m"
    assert config.max_pending == 5 and config.kv_block_size == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.stage = StageOptions()  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(config)) == config


def test_defaults_without_a_model():
    config = parse_stage_config("s", {})
    assert config == StageConfig() and config.engine is None and config.experts is None
    assert config.max_pending == 128 and config.kv_block_size == 16
    with pytest.raises(ValueError, match="no 'model' option"):
        config.model
    assert parse_stage_config("e", {"model": "/m", "max_num_seqs": 3}).max_pending == 6  # twice max_num_seqs


def test_shards_set_the_tensor_parallel_size():
    assert parse_stage_config("e", {"model": "/m"}, shards=2).engine.parallel.tensor_parallel_size == 2
    assert parse_stage_config("e", {"model": "/m", "tensor_parallel_size": 2}, shards=2).engine.parallel.tensor_parallel_size == 2
    with pytest.raises(ValueError, match=r"stage 'e': option 'tensor_parallel_size' \(4\) differs from the stage's shards \(2\)"):
        parse_stage_config("e", {"model": "/m", "tensor_parallel_size": 4}, shards=2)


def test_a_custom_role_keeps_the_options_no_part_knows():
    config = parse_stage_config("tok", {"model": "/m", "max_len": 128, "flags": ["a", "b"]})
    assert config.extra == (("flags", ["a", "b"]), ("max_len", 128))
    assert config.extras == {"flags": ["a", "b"], "max_len": 128}
    assert isinstance(config.engine, EngineConfig) and config.model.model == "/m"
    assert parse_stage_config("x", {"anything": 1}).extras == {"anything": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "/m", "dtpye": "float32"}, r"stage 'eng': unknown option 'dtpye' \(known: .*dtype"),
        ({"model": "/m", "block_size": 0}, "stage 'eng': block_size must be positive, got 0"),
        ({"model": "/m", "dtype": "float8"}, "stage 'eng': dtype must be one of"),
        ({"model": "/m", "max_num_seqs": "32"}, r"stage 'eng': option 'max_num_seqs' must be an integer, got '32'"),
        ({"model": "/m", "enable_prefix_caching": 1}, "stage 'eng': option 'enable_prefix_caching' must be a bool"),
        ({"model": "/m", "max_model_len": 2.5}, "stage 'eng': option 'max_model_len' must be an integer or None"),
        ({"model": 3}, "stage 'eng': option 'model' must be a string"),
        ({"model": ""}, "stage 'eng': model must name a model directory"),
        ({"model": "/m", "num_threads": 0}, "stage 'eng': num_threads must be an integer >= 1, got 0"),
        ({"model": "/m", "checkpoint_kv": "yes"}, "stage 'eng': option 'checkpoint_kv' must be a bool"),
        ({"model": "/m", "expert_placement": "even"}, r"stage 'eng': expert options \['expert_placement'\] need expert_actors"),
        ({"model": "/m", "expert_actors": 0}, "stage 'eng': expert_actors must be an integer >= 1, got 0"),
        ({"model": "/m", "expert_cpus": "one"}, "stage 'eng': option 'expert_cpus' must be a number"),
        ({"dtype": "float32"}, "stage 'eng': option 'dtype' needs a 'model' option"),
        ({"expert_actors": 2}, "stage 'eng': option 'expert_actors' needs a 'model' option"),
    ],
)
def test_a_bad_option_names_the_stage_and_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        parse_stage_config("eng", options, extras=False)


def test_an_in_process_graph_runs_a_sharded_stage_whole():
    """`shards` split a stage over actors when the graph is deployed; in one process the
    stage runs unsharded, as it always did (no Ray is needed to run a graph in-process)."""
    from tideflow.runtime.dataflow.inprocess import _unsharded
    from tideflow.runtime.dataflow.role import StageContext

    sharded = StageContext("g", "engine", 0, parse_stage_config("engine", {"model": "/m", "max_num_seqs": 8}, shards=2))
    whole = _unsharded(sharded)
    assert whole.config.engine.parallel.tensor_parallel_size == 1
    assert whole.config.engine.scheduler == sharded.config.engine.scheduler and whole.stage == "engine"
    plain = StageContext("g", "tok", 0, parse_stage_config("tok", {"model": "/m"}))
    assert _unsharded(plain) is plain
