import json

import pytest

from tideflow.bench import offline
from tideflow.bench.bench_model import BENCH_MODEL_CONFIG, bench_model
from tideflow.bench.systems import HFContinuous
from tideflow.bench.workloads import mixed_trace


@pytest.fixture(scope="module")
def result(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "result.json"
    res = offline.run_offline(
        tiny_model_dir("llama"), num_requests=4, seed=0, systems=["hf-static", "tideflow"], batch_size=3,
        dtype="float64", json_path=path, max_prompt=32, min_output=2, max_output=8, overhead_steps=0,
        return_tokens=True,
    )
    return res, path


def test_run_offline_reports_every_system(result):
    res, path = result
    assert set(res["systems"]) == {"hf-static", "tideflow"}
    assert res["trace"]["num_requests"] == 4
    for rec in res["systems"].values():
        assert rec["wall_s"] > 0 and rec["output_tok_s"] > 0 and rec["total_tok_s"] > rec["output_tok_s"]
        assert rec["output_tokens"] == res["trace"]["output_tokens"]
    # static batches of 3 run to their longest request: never fewer tokens than asked for
    assert res["systems"]["hf-static"]["generated_tokens"] >= res["trace"]["output_tokens"]
    assert res["systems"]["tideflow"]["generated_tokens"] == res["trace"]["output_tokens"]
    assert res["ratios"]["tideflow/hf-static"] > 0
    assert json.loads(path.read_text()) == json.loads(json.dumps(res))


def test_greedy_outputs_match_hf_token_for_token(result):
    res, _ = result
    tokens = res["debug"]["token_ids"]
    trace = mixed_trace(4, 0, vocab_size=res["model"]["vocab_size"], max_prompt=32, min_output=2, max_output=8)
    assert len({len(r.prompt_token_ids) for r in trace}) > 1  # hf-static pads on the left
    assert [len(t) for t in tokens["tideflow"]] == [r.max_tokens for r in trace]
    assert tokens["tideflow"] == tokens["hf-static"]
    assert res["agreement_reference"] == "tideflow"  # every other system is compared with tideflow
    assert res["agreement"] == {"hf-static": {"identical_requests": 4, "requests": 4, "first_divergence": {}}}


def test_table_lists_the_systems(result):
    table = offline.format_table(result[0])
    assert "hf-static" in table and "tideflow" in table and "output tok/s" in table


def test_measure_overhead_small(tiny_model_dir):
    o = offline.measure_overhead(tiny_model_dir("llama"), batch=4, prompt_len=16, steps=2)
    assert o["batch"] == 4 and o["steps"] == 2
    assert o["step_ms"] > 0 and o["forward_ms"] > 0
    assert set(o["parts_ms"]) == {"schedule", "prepare_inputs", "execute", "update"}


def test_unknown_system_raises(tiny_model_dir):
    with pytest.raises(ValueError, match="systems"):
        offline.run_offline(tiny_model_dir("llama"), num_requests=1, seed=0, systems=["tgi"])


def test_cli_parser_defaults():
    args = offline.build_parser().parse_args([])
    assert args.systems == "hf-static,hf-cb,tideflow"
    assert (args.max_prompt, args.max_output) == (1024, 512)
    args = offline.build_parser().parse_args(["--num-requests", "3", "--json", "x.json", "--max-prompt", "64"])
    assert (args.num_requests, args.json, args.max_prompt) == (3, "x.json", 64)


def test_bench_model_is_written_once(tmp_path, monkeypatch):
    calls = []

    def fake_write(kind, path, seed=0, **overrides):
        calls.append(overrides)
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(overrides))
        (path / "model.safetensors").write_text("")
        return path

    monkeypatch.setattr("tideflow.testing.tiny_models.write_tiny_model", fake_write)
    target = tmp_path / "m"
    assert bench_model(target) == target
    assert bench_model(target) == target
    assert calls == [BENCH_MODEL_CONFIG]
    (target / "config.json").write_text(json.dumps({"hidden_size": 1}))  # stale: rewritten
    assert bench_model(target) == target
    assert len(calls) == 2 and json.loads((target / "config.json").read_text()) == BENCH_MODEL_CONFIG


def test_bench_model_has_20_to_30m_parameters():
    import torch
    from transformers import AutoModelForCausalLM

    from tideflow.testing.tiny_models import tiny_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny_config("llama", **BENCH_MODEL_CONFIG))
    assert 20e6 <= sum(p.numel() for p in model.parameters()) <= 30e6


def test_hf_continuous_batching_honours_per_request_limits(tiny_model_dir):
    system = HFContinuous(tiny_model_dir("llama"), "float32")
    try:
        trace = mixed_trace(3, 0, vocab_size=512, max_prompt=24, min_output=2, max_output=9)
        gen = system.generate(trace)
    finally:
        system.close()
    assert [len(t) for t in gen.token_ids] == [r.max_tokens for r in trace]


def test_structured_bench_times_both_runs_and_the_compile(tiny_model_dir, tmp_path, capsys):
    """`--structured json` on a tiny trace: both runs, their ratio, the compile times, the table;
    an unknown kind is refused by the parser."""
    path = tmp_path / "structured.json"
    argv = ["--model", tiny_model_dir("llama"), "--structured", "json", "--num-requests", "3", "--max-prompt", "32",
            "--min-output", "4", "--max-output", "12", "--json", str(path)]
    assert offline.main(argv) == 0
    table = capsys.readouterr().out
    assert "constrained / unconstrained throughput" in table and "cached" in table
    res = json.loads(path.read_text())
    runs = res["runs"]
    assert set(runs) == {"unconstrained", "constrained"} and res["ratio"] > 0
    assert runs["unconstrained"]["generated_tokens"] == res["trace"]["output_tokens"]
    assert 0 < runs["constrained"]["generated_tokens"] <= res["trace"]["output_tokens"]
    assert res["structured"]["complete_outputs_valid"]
    c = res["compile"]
    assert c["cache_misses"] == 1 and c["cache_hits"] > 0 and c["cold_ms"] > 0 and c["cached_ms"] > 0
    with pytest.raises(SystemExit):
        offline.build_parser().parse_args(["--structured", "xml"])
