"""Batch jobs on Ray Data: a 500-row parquet job gives each row the greedy tokens of
`LLM.generate`; a job killed midway and started again ends with exactly one row per input row
(parquet, jsonl and csv inputs, bad rows included) and the same outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tideflow import SamplingParams
from tideflow.batch import run_job

from .conftest import ENGINE_OPTIONS

GREEDY = SamplingParams(temperature=0, max_tokens=4)
WORDS = "alpha beta gamma delta fox river stone cloud import def return class while yield".split()


def _prompts(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for i in range(n)]


@pytest.fixture(scope="module")
def reference(reference_llm):
    return lambda prompts: [o.outputs[0].token_ids for o in reference_llm.generate(prompts, GREEDY, use_tqdm=False)]


def test_500_row_parquet_job_matches_llm_generate(ray_session, model, reference, tmp_path):
    prompts = _prompts(500, seed=0)
    pq.write_table(pa.table({"prompt": prompts, "source": ["gen"] * 500}), tmp_path / "in.parquet", row_group_size=100)
    summary = run_job(tmp_path / "in.parquet", tmp_path / "out", model, sampling_params=GREEDY,
                      engine_options=ENGINE_OPTIONS, batch_size=125)
    out = pq.read_table(tmp_path / "out")
    assert out.num_rows == 500 and out.column("error").null_count == 500
    assert out.column("source").to_pylist() == ["gen"] * 500  # input columns are kept
    by_row = {int(r["row_id"].split(":")[1]): r for r in out.to_pylist()}
    assert sorted(by_row) == list(range(500)) and all(r["row_id"].startswith("in.parquet:") for r in by_row.values())
    expected = reference(prompts)
    assert [by_row[i]["prompt"] for i in range(500)] == prompts
    assert [by_row[i]["generated_token_ids"] for i in range(500)] == expected
    generated = sum(len(t) for t in expected)
    assert (summary.rows, summary.skipped, summary.errors, summary.output_rows, summary.duplicates) == (500, 0, 0, 500, 0)
    assert summary.generated_tokens == generated and summary.prompt_tokens == sum(out.column("num_prompt_tokens").to_pylist())
    assert summary.tokens_per_s > 0 and "500 generated" in summary.format()


def _mixed_inputs(root) -> tuple[dict[str, str | None], dict[str, str]]:
    """A directory of parquet, jsonl and csv files: row id -> prompt for the good rows, and
    row id -> the expected start of the error for the bad ones."""
    root.mkdir()
    good, bad = {}, {}
    parquet = _prompts(60, seed=1)
    pq.write_table(pa.table({"prompt": parquet}), root / "a.parquet", row_group_size=20)
    good.update({f"a.parquet:{i}": p for i, p in enumerate(parquet)})
    lines = [{"prompt": p} for p in _prompts(10, seed=2)] + [{"prompt": 7}, {"prompt": ""}]
    (root / "b.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    good.update({f"b.jsonl:{i}": lines[i]["prompt"] for i in range(10)})
    bad.update({"b.jsonl:10": "prompt: expected a string, got number", "b.jsonl:11": "prompt: the prompt is empty"})
    csv_prompts = _prompts(10, seed=3)
    rows = [p.replace(",", " ") for p in csv_prompts] + ["", "word " * 1500]
    (root / "c.csv").write_text("prompt\n" + "".join(f'"{r}"\n' for r in rows))
    good.update({f"c.csv:{i}": rows[i] for i in range(10)})
    bad.update({"c.csv:10": "prompt: the prompt is empty", "c.csv:11": "prompt_token_ids: the prompt has"})
    return good, bad


def _wait_until_job_is_gone(ray, driver_pid: int, timeout: float = 120.0) -> None:
    """Until Ray has marked the killed driver's job dead and every actor it owned is dead too
    (Ray finds out about the driver's death, then kills its actors, a little later). Ray Data's
    detached bookkeeping actors outlive any job and write nothing."""
    from ray._private import state

    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["JobID"] for j in state.jobs() if j["DriverPid"] == driver_pid and j["IsDead"]}
        alive = [a for a in state.actors().values() if a["JobID"] in jobs and a["State"] != "DEAD" and not a["IsDetached"]]
        if jobs and not alive:
            return
        assert time.monotonic() < deadline, f"the killed job's actors still run: {alive}"
        time.sleep(0.1)


def test_killed_job_resumes_with_one_row_per_input_row(ray_session, model, reference, tmp_path):
    good, bad = _mixed_inputs(tmp_path / "in")
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "tideflow.cli", "batch", "--input", str(tmp_path / "in"), "--output", str(out),
           "--model", model, "--max-tokens", "4", "--dtype", "float32", "--batch-size", "4"]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cli, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("part-*.parquet")):  # the first committed batch
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no output file appeared"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_until_job_is_gone(ray_session, proc.pid)  # its Ray Data actors could still commit a batch until then
    written = pq.read_table(out).num_rows
    total = len(good) + len(bad)
    assert 0 < written < total, f"the job was not killed midway ({written} of {total} rows written)"
    (out / "part-torn.parquet").write_bytes(b"PAR1 torn write")  # e.g. from a writer without atomic renames

    summary = run_job(tmp_path / "in", out, model, sampling_params=SamplingParams(temperature=0.0, max_tokens=4),
                      engine_options={"dtype": "float32"}, batch_size=4)
    assert (summary.skipped, summary.rows, summary.output_rows, summary.duplicates) == (written, total - written, total, 0)
    assert (out / "_corrupt-part-torn.parquet.corrupt").exists()
    rows = {r["row_id"]: r for r in pq.read_table(out).to_pylist()}
    assert len(rows) == total and set(rows) == set(good) | set(bad)
    for rid, start in bad.items():
        assert rows[rid]["error"].startswith(start) and rows[rid]["generated_token_ids"] is None
    ids = sorted(good)
    assert [rows[r]["generated_token_ids"] for r in ids] == reference([good[r] for r in ids])
    assert all(rows[r]["error"] is None for r in ids)


def test_cli_rejects_bad_arguments_before_starting(model, tmp_path, capsys):
    from tideflow.cli import main

    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "in.parquet")
    base = ["batch", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"), "--model", model]
    assert main(base) == 2
    assert "prompt_column: in.parquet has no column 'prompt'" in capsys.readouterr().err
    assert main([*base, "--prompt-column", "text", "--concurrency", "2,x"]) == 2
    assert "--concurrency: expected N or MIN,MAX" in capsys.readouterr().err
    assert main([*base, "--prompt-column", "text", "--temperature", "-1"]) == 2
    assert "temperature must be non-negative" in capsys.readouterr().err
    assert main(["batch", "--input", str(tmp_path / "none"), "--output", str(tmp_path / "o"), "--model", model]) == 2
    assert "input: no such file" in capsys.readouterr().err
    assert main([*base, "--prompt-column", "text", "--structured-outputs", "{regex"]) == 2
    assert "--structured-outputs: not JSON" in capsys.readouterr().err
    assert main([*base, "--prompt-column", "text", "--structured-outputs", '{"regex": "a(b"}']) == 2
    assert "sampling_params: structured_outputs.regex" in capsys.readouterr().err
    assert main([*base, "--prompt-column", "text", "--structured-outputs-column", "shape"]) == 2
    assert "structured_outputs_column: in.parquet has no column 'shape'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--prompt-column", "text", "--messages-column", "m"])


def test_a_constrained_job_is_its_own_job_when_resumed(model, tmp_path):
    """The manifest holds the job's params as JSON does (a choice's tuple as a list, logit_bias
    keys as strings): the same job matches it on resume, another constraint does not."""
    import dataclasses

    from tideflow.batch import output
    from tideflow.batch.job import _manifest
    from tideflow.batch.run import generator_spec

    params = SamplingParams(logit_bias={3: 1.0}, structured_outputs={"choice": ["a", "b"]})
    spec = generator_spec(model, prompt_column="p", sampling_params=params, structured_outputs_column="shape")
    output.check_manifest(tmp_path, _manifest("in.parquet", spec, "row_id"))
    output.check_manifest(tmp_path, _manifest("in.parquet", spec, "row_id"))  # resumed: the same job
    other = dataclasses.replace(spec, sampling_params=params.replace(structured_outputs={"choice": ["a"]}))
    with pytest.raises(ValueError, match="sampling_params differ"):
        output.check_manifest(tmp_path, _manifest("in.parquet", other, "row_id"))
