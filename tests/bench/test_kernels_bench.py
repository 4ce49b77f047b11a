"""`tideflow bench kernels`: the table and JSON come out for a selected case; bad options exit 2."""

from __future__ import annotations

import json

from tideflow.bench.kernels import KERNEL_MODULES, main, time_pair


def test_every_kernel_module_declares_bench_cases():
    import importlib

    for name in KERNEL_MODULES:
        cases = importlib.import_module(name).bench_cases()
        assert cases and all(len(c) == 3 and callable(c[1]) and callable(c[2]) for c in cases), name


def test_time_pair_alternates_and_returns_medians():
    calls = []
    k, r = time_pair(lambda: calls.append("k"), lambda: calls.append("r"), repeats=3)
    assert calls == ["k", "r"] * 4  # one warm-up each, then alternating
    assert k >= 0 and r >= 0


def test_main_prints_the_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "kernels.json"
    assert main(["--only", "reshape_and_cache", "--repeats", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "reshape_and_cache 2048 tokens" in out and "speedup" in out
    result = json.loads(path.read_text())
    (row,) = result["kernels"]
    assert row["speedup"] == row["torch_ms"] / row["kernel_ms"]
    assert result["gpu"] is None  # no CUDA here


def test_bad_options_exit_2(capsys):
    assert main(["--repeats", "0"]) == 2


def test_e2e_runs_both_backends_on_the_same_trace(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "kernels.json"
    argv = ["--only", "arrow pack", "--repeats", "1", "--e2e", "2", "--model", tiny_model_dir("llama"), "--json", str(path)]
    assert main(argv) == 0
    e2e = json.loads(path.read_text())["e2e"]
    assert e2e["num_requests"] == 2 and e2e["same_tokens"] is True
    assert e2e["speedup"] == e2e["auto_tok_s"] / e2e["torch_tok_s"] and e2e["torch_tok_s"] > 0
    assert "engine, mixed trace x2" in capsys.readouterr().out
