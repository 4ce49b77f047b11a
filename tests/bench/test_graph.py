"""`tideflow bench graph` on a tiny model: every system returns the same greedy tokens and
the result carries the figures the table prints (no timing is asserted)."""

from __future__ import annotations

from tideflow.bench.graph import format_table, run_graph_bench


def test_graph_bench_reports_each_system(ray_session, tiny_model_dir, tmp_path):
    path = tmp_path / "graph.json"
    result = run_graph_bench(
        tiny_model_dir("llama"), num_requests=6, systems=("engine", "colocated"), max_prompt=48, max_output=10,
        json_path=str(path),
    )
    systems = result["systems"]
    assert set(systems) == {"engine", "colocated"}
    for r in systems.values():
        assert r["same_tokens_as_engine"] is True
        assert r["output_tokens"] > 0 and r["output_tok_s"] > 0 and r["ttft_median_ms"] >= 0
    assert systems["engine"]["ratio_vs_engine"] == 1.0
    assert path.exists() and "colocated" in format_table(result)
