"""`tideflow bench serve` end to end against the live server the serve tests share: one run
with the in-process comparison and a goodput SLO, then a sweep with its plot."""

from __future__ import annotations

import json

import pytest

from tideflow.bench.workloads import mixed_trace


def test_bench_serve_end_to_end_and_sweep(server, tiny_model_dir, tmp_path, capsys):
    from tideflow.cli import main

    lengths = ["--max-prompt", "48", "--max-output", "12"]
    expected = sum(r.max_tokens for r in mixed_trace(6, 0, vocab_size=512, max_prompt=48, max_output=12))
    one = tmp_path / "one.json"
    assert main(["bench", "serve", "--url", server.url, "--num-prompts", "6", "--rate", "inf", *lengths,
                 "--goodput", "ttft:600000", "--compare-inprocess", tiny_model_dir("llama"),
                 "--inprocess-dtype", "float32", "--json", str(one)]) == 0
    out = capsys.readouterr().out
    assert "============ Serving Benchmark Result ============" in out and "Mean ITL over HTTP" in out
    (run,) = json.loads(one.read_text())["runs"]
    assert (run["completed"], run["failed"]) == (6, 0)
    assert run["total_output_tokens"] == run["requested_output_tokens"] == expected  # ignore_eos: all of them
    assert run["goodput"] == pytest.approx(run["request_throughput"])  # a 10-minute TTFT SLO: all good
    assert run["inprocess"]["total_output_tokens"] == expected and run["inprocess"]["mean_decode_step_ms"] > 0

    sweep, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    assert main(["bench", "serve", "--url", server.url, "--num-prompts", "6", *lengths, "--sweep", "20,inf",
                 "--plot", str(png), "--json", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "p99 TTFT ms" in out and "median TPOT ms" in out
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    runs = json.loads(sweep.read_text())["runs"]
    assert [r["request_rate"] for r in runs] == [20.0, "inf"]
    assert all(r["completed"] == 6 and r["total_output_tokens"] == expected for r in runs)
