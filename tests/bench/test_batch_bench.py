"""`tideflow bench batch` on a tiny model: the batch path and the offline engine generate the
same greedy tokens for every row of the trace, and the result carries what the table prints
(no timing is asserted)."""

from __future__ import annotations

import json

from tideflow.bench.batch import format_table, main, run_batch_bench


def test_batch_bench_compares_the_batch_path_with_the_offline_engine(ray_session, tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "batch.json"
    assert main(["--model", tiny_model_dir("llama"), "--num-requests", "6", "--max-prompt", "48", "--max-output", "8",
                 "--batch-size", "4", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["same_tokens"] is True
    offline, batch = result["systems"]["offline"], result["systems"]["batch"]
    assert batch["rows"] == 6 and batch["errors"] == 0
    assert batch["output_tokens"] == offline["output_tokens"] == result["trace"]["output_tokens"] > 0
    assert result["ratio_batch_vs_offline"] == batch["output_tok_s"] / offline["output_tok_s"] > 0
    assert "batch / offline" in capsys.readouterr().out and "same tokens: True" in format_table(result)
