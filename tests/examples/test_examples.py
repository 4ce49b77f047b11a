"""Every example runs, so none of them rots."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from tideflow import SamplingParams
from tideflow.graphs import Graph

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_disaggregated_graph_example_runs(ray_session, tiny_model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}  # joins the session's Ray
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "disaggregated_graph.py"), tiny_model_dir("llama")],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if " -> " in line]
    assert len(lines) == 2 and lines[0].startswith("'def fibonacci(n):' -> ")
    assert "prefill" in proc.stdout and "decode" in proc.stdout
    assert len(proc.stdout.splitlines()[0]) > len("'def fibonacci(n):' -> ''")
    assert sum(len(line) for line in lines) > 40  # it generated text


def test_chat_graph_yaml_deploys_and_chats(ray_session, tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    text = (ROOT / "examples" / "chat_graph.yaml").read_text().replace("MODEL_DIR", model)
    graph = Graph.from_yaml(text)
    assert Graph.from_yaml(graph.to_yaml()).stages == graph.stages
    handle = graph.deploy()
    try:
        messages = [{"role": "user", "content": "Write a function"}]
        out = handle.generate([{"messages": messages}], SamplingParams(temperature=0, max_tokens=8))[0]
        from tideflow import LLM

        expected = LLM(model, dtype="float32").chat(messages, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0]
        assert out.outputs[0].token_ids == expected.outputs[0].token_ids
        assert out.prompt_token_ids == expected.prompt_token_ids  # the chat template was applied
    finally:
        handle.shutdown()


def test_batch_job_example_runs(ray_session, tiny_model_dir, tmp_path):
    import pyarrow.parquet as pq

    from tideflow import LLM

    model = tiny_model_dir("llama")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}  # joins the session's Ray
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "batch_job.py"), model, str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows: 6 generated, 0 already done, 0 with errors" in proc.stdout
    assert len([line for line in proc.stdout.splitlines() if line.startswith("q")]) == 6
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(r["row_id"] for r in rows) == [f"q{i}" for i in range(6)]  # keyed by the input's id column
    llm, params = LLM(model, dtype="float32"), SamplingParams(temperature=0, max_tokens=16)
    for row in rows:
        expected = llm.chat(row["messages"], params, use_tqdm=False)[0]
        assert row["generated_token_ids"] == expected.outputs[0].token_ids
