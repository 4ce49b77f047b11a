"""`tideflow replay LOG_DIR --graph ...`: a recorded request log runs again and the requests
whose outputs differ are reported; bad arguments are explicit errors."""

from __future__ import annotations

import pytest

from tideflow import SamplingParams
from tideflow.cli import main
from tideflow.graphs.builtin import colocated
from tideflow.runtime.dataflow.ingress import request_row
from tideflow.runtime.recovery.request_log import RequestLog, read_log


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama")


def _record(directory, model, prompts, params, tamper=None):
    out = colocated(model, dtype="float64").run(prompts, params)
    if tamper is not None:
        out[tamper].outputs[0].token_ids = out[tamper].outputs[0].token_ids[:-1] + [3]
    log = RequestLog(str(directory), {"graph": "colocated", "model": model})
    log.append([request_row(f"r{i}", p, sp) for i, (p, sp) in enumerate(zip(prompts, params))], out)
    log.close()
    return out


def test_replay_reports_only_the_requests_that_differ(model, tmp_path, capsys):
    prompts = ["def f(x):", {"prompt_token_ids": [5, 6, 7, 8]}, {"messages": [{"role": "user", "content": "hi"}]}]
    params = [SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)] * 3
    out = _record(tmp_path / "same", model, prompts, params)
    meta, records = read_log(str(tmp_path / "same"))
    assert meta["model"] == model and [r.prompt for r in records] == prompts
    assert [r.token_ids[0] for r in records] == [o.outputs[0].token_ids for o in out]

    assert main(["replay", str(tmp_path / "same"), "--graph", "colocated", "--dtype", "float64"]) == 0
    assert "3 request(s)" in capsys.readouterr().out

    _record(tmp_path / "changed", model, prompts, params, tamper=1)
    assert main(["replay", str(tmp_path / "changed"), "--graph", "colocated", "--model", model, "--dtype", "float64"]) == 1
    report = capsys.readouterr().out
    assert "1 differ" in report and "r1:" in report and "r0:" not in report and "first difference at 5" in report


def test_replay_arguments_fail_clearly(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "missing")]) == 2
    assert "log_dir" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["replay", str(tmp_path / "empty")]) == 2
    assert "no recorded requests" in capsys.readouterr().err
