"""Engine options on the command line (`tideflow serve` and `tideflow batch`), named as vLLM
names them: given flags reach the engine on the serve and batch paths, flags left out pass
nothing, and a bad value is a usage error naming the flag."""

from __future__ import annotations

import pytest

from tideflow.cli import build_parser
from tideflow.engine_args import engine_options

FLAGS = ["--max-num-seqs", "2", "--block-size", "8", "--no-enable-prefix-caching", "--kv-cache-memory", "4000000",
         "--max-num-batched-tokens", "512", "-tp", "1", "--kernel-backend", "torch", "--dtype", "float32"]
EXPECTED = {"max_num_seqs": 2, "block_size": 8, "enable_prefix_caching": False, "kv_cache_memory_bytes": 4_000_000,
            "max_num_batched_tokens": 512, "tensor_parallel_size": 1, "kernel_backend": "torch", "dtype": "float32"}


def test_serve_flags_become_engine_options_and_reach_the_graphs_engine(tiny_model_dir):
    from tideflow.serve.config import ServeConfig
    from tideflow.serve.deployment import build_graph

    model = tiny_model_dir("llama")
    args = build_parser().parse_args(["serve", "--model", model, *FLAGS, "--seed", "7"])
    assert engine_options(args) == {**EXPECTED, "seed": 7}
    assert engine_options(build_parser().parse_args(["serve", "--model", model])) == {}  # engine defaults apply
    config = ServeConfig.from_args({"model": model, "engine_options": engine_options(args)})
    compiled = build_graph(config, None, "g").compile()
    engine = compiled.configs["engine"].engine
    assert (engine.scheduler.max_num_seqs, engine.cache.block_size, engine.cache.enable_prefix_caching) == (2, 8, False)
    assert (engine.model.seed, engine.kernel_backend, engine.scheduler.max_num_batched_tokens) == (7, "torch", 512)


def test_batch_flags_reach_its_in_process_engine_and_its_seed_stays_the_sampling_seed(tiny_model_dir):
    from tideflow.batch.backends import EngineBackend

    model = tiny_model_dir("llama")
    args = build_parser().parse_args(["batch", "--input", "x.jsonl", "--output", "out", "--model", model, *FLAGS,
                                      "--seed", "5"])
    options = engine_options(args, seed=False)
    assert options == EXPECTED and args.seed == 5
    engine = EngineBackend(model, options).llm.engine.config
    assert (engine.scheduler.max_num_seqs, engine.cache.block_size, engine.cache.enable_prefix_caching) == (2, 8, False)


@pytest.mark.parametrize("command", ["serve", "batch"])
@pytest.mark.parametrize("flag,value", [("--block-size", "0"), ("--max-num-seqs", "two"), ("--kernel-backend", "cuda"),
                                        ("--dtype", "float8")])
def test_a_bad_value_is_a_usage_error_naming_the_flag(command, flag, value, capsys):
    extra = ["--input", "x", "--output", "o", "--model", "m"] if command == "batch" else []
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, *extra, flag, value])
    assert exit_.value.code == 2 and flag in capsys.readouterr().err
