"""The vLLM peer without vLLM: a missing environment fails clearly (library and CLI), and the
offline runner's protocol is exercised for real by running `peers/vllm_offline_runner.py` in a
fake peer environment whose `vllm` package is a stand-in with vLLM's `LLM.generate` interface
(and vLLM's habit of printing to stdout). The real peer runs in the test at the end, skipped
when `.venv-vllm` is absent (as in CI)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tideflow.bench import offline
from tideflow.bench.machine import tree_cpu_s
from tideflow.bench.peer_vllm import PeerEnvironmentError, VllmOffline, default_env, resolve_env
from tideflow.bench.serve_vllm import VllmServer, compare, format_comparison
from tideflow.bench.systems import expand_systems
from tideflow.bench.workloads import mixed_trace

REPO = Path(__file__).resolve().parents[2]

FAKE_VLLM = '''
"""A stand-in for vLLM: request i's k-th token is (last prompt token + k + 1) % 1000."""
import os
import sys
import time

__version__ = "0.0-fake"


class SamplingParams:
    def __init__(self, temperature, max_tokens, ignore_eos, detokenize):
        assert temperature == 0 and ignore_eos and not detokenize
        self.max_tokens = max_tokens


class _Completion:
    def __init__(self, token_ids):
        self.token_ids = token_ids


class _Output:
    def __init__(self, token_ids):
        self.outputs = [_Completion(token_ids)]


class LLM:
    def __init__(self, model, dtype, max_num_seqs, max_num_batched_tokens, seed):
        print("INFO fake vllm loading", model, dtype, os.environ.get("VLLM_CPU_OMP_THREADS_BIND"), flush=True)
        if "die" in model:
            os._exit(3)
        if "broken" in model:
            raise ValueError("fake vllm cannot load " + model)
        assert (max_num_seqs, max_num_batched_tokens, seed) == (64, 2048, 0)

    def generate(self, prompts, params, use_tqdm):
        print("INFO fake vllm generating", len(prompts), "{not json", flush=True)  # noise on stdout
        time.sleep(0.05)
        return [_Output([(p["prompt_token_ids"][-1] + k + 1) % 1000 for k in range(sp.max_tokens)])
                for p, sp in zip(prompts, params)]
'''


def fake_env(root: Path, vllm_script: str = "exit 0") -> Path:
    """A peer environment: bin/python runs tideflow's interpreter on the fake `vllm`, bin/vllm
    runs `vllm_script`."""
    (root / "lib" / "vllm").mkdir(parents=True)
    (root / "lib" / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    (root / "bin").mkdir()
    scripts = {"python": f'PYTHONPATH={root / "lib"} exec {sys.executable} "$@"', "vllm": vllm_script}
    for name, body in scripts.items():
        path = root / "bin" / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return root


# -- a missing environment ------------------------------------------------------------------------
def test_a_missing_environment_says_how_to_build_it(tmp_path, monkeypatch):
    with pytest.raises(PeerEnvironmentError, match=r"not found at .*nowhere: run `make bench-peers`"):
        resolve_env(tmp_path / "nowhere")
    monkeypatch.setenv("TIDEFLOW_VLLM_ENV", str(tmp_path / "from-env"))
    assert default_env() == tmp_path / "from-env"
    with pytest.raises(PeerEnvironmentError, match="from-env"):
        offline.run_offline("unused", num_requests=1, seed=0, systems=["tideflow", "vllm"])


def test_cli_exits_2_with_the_message_and_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "tideflow.cli", "bench", "offline", "--systems", "tideflow,vllm",
         "--vllm-env", str(tmp_path / "nowhere")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert f"vLLM peer environment not found at {tmp_path / 'nowhere'}: run `make bench-peers`" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_compare_vllm_exits_2_before_sending_anything(tmp_path, capsys):
    from tideflow.bench import serve as bench_serve

    # an unreachable --url would be exit code 1: 2 shows the environment is checked first
    assert bench_serve.main(["--url", "http://127.0.0.1:1", "--compare-vllm", "--vllm-env", str(tmp_path / "no")]) == 2
    assert f"vLLM peer environment not found at {tmp_path / 'no'}: run `make bench-peers`" in capsys.readouterr().err


def test_vllm_names_both_configurations():
    assert expand_systems(["tideflow", "vllm"]) == ["tideflow", "vllm-default", "vllm-2t"]
    assert expand_systems(["vllm-2t", "vllm"]) == ["vllm-2t", "vllm-default"]
    with pytest.raises(ValueError, match="systems"):
        expand_systems(["vllm-4t"])


# -- the offline runner's protocol, on a fake vLLM ------------------------------------------------
def test_runner_serves_a_trace_over_its_own_pipes(tmp_path):
    env = fake_env(tmp_path / "env")
    trace = mixed_trace(3, 0, vocab_size=500, max_prompt=20, min_output=2, max_output=6)
    system = VllmOffline("model-dir", "float32", "2t", env)
    try:
        assert system.version == "0.0-fake" and system.llm_load_s >= 0
        for _ in range(2):  # the process stays alive across calls
            gen = system.generate(trace)
            assert gen.token_ids == [[(r.prompt_token_ids[-1] + k + 1) % 1000 for k in range(r.max_tokens)]
                                     for r in trace]
            assert gen.generated_tokens == sum(r.max_tokens for r in trace)
            assert 0.05 <= gen.wall_s < 5  # the runner's own timing of generate
        assert system.cpu_s() > 0  # the runner's interpreter start-up at least
    finally:
        system.close()
    assert system.proc.returncode == 0
    log = system.log_path.read_text()
    assert "fake vllm loading model-dir float32 0-1" in log  # the 2t config's thread binding reached it
    assert "fake vllm generating 2" in log  # its warm-up on two requests


@pytest.mark.parametrize("model, expected", [
    ("broken-model", "(?s)failed while loading.*ValueError: fake vllm cannot load broken-model"),
    ("die-model", r"(?s)exited \(code 3\) while loading; its log, .*, ends:\n.*fake vllm loading die-model"),
])
def test_runner_failures_carry_the_reason(tmp_path, model, expected):
    with pytest.raises(RuntimeError, match=expected) as info:
        VllmOffline(model, "float32", "default", fake_env(tmp_path / "env"))
    assert "tideflow-vllm-default-" in str(info.value)  # the log's path


def test_offline_bench_reports_the_peer_against_tideflow(tmp_path, tiny_model_dir):
    res = offline.run_offline(
        tiny_model_dir("llama"), num_requests=3, seed=0, systems=["vllm-default", "tideflow"], max_prompt=24,
        min_output=2, max_output=5, overhead_steps=0, vllm_env=fake_env(tmp_path / "env"), return_tokens=True,
    )
    peer = res["systems"]["vllm-default"]
    assert peer["wall_s"] < 5 and peer["load_s"] > 0 and peer["output_tokens"] == res["trace"]["output_tokens"]
    assert res["agreement_reference"] == "tideflow"
    fake_ids, ours = res["debug"]["token_ids"]["vllm-default"], res["debug"]["token_ids"]["tideflow"]
    identical = sum(a == b for a, b in zip(fake_ids, ours))
    assert res["agreement"]["vllm-default"]["identical_requests"] == identical
    assert res["ratios"]["tideflow/vllm-default"] > 0
    table = offline.format_table(res)
    assert f"greedy tokens, vllm-default vs tideflow: {identical}/3 requests identical" in table
    assert "load times (not in wall s): vllm-default" in table


def test_float64_is_refused_before_starting_vllm(tmp_path):
    with pytest.raises(ValueError, match="float32 or bfloat16, not float64"):
        VllmOffline("m", "float64", "default", fake_env(tmp_path / "env"))


def test_tree_cpu_s_counts_a_busy_child():
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    child = subprocess.Popen(["sh", "-c", f'{sys.executable} -c "{code}"; true'], start_new_session=True)
    try:
        deadline = time.time() + 20
        while tree_cpu_s(child.pid) < 0.3 and time.time() < deadline:
            time.sleep(0.1)
        assert tree_cpu_s(child.pid) >= 0.3  # the grandchild's CPU, counted through the shell
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the shell and its python
        child.wait()


# -- serving ---------------------------------------------------------------------------------------
def test_a_dying_vllm_serve_is_reported_with_its_log(tmp_path):
    env = fake_env(tmp_path / "env", vllm_script='echo "ValueError: no such model $2"; exit 1')
    server = VllmServer("some-model", "name", env_path=env, startup_timeout_s=60)
    with pytest.raises(RuntimeError, match=r"vllm serve exited with code 1 .*log, .*, ends:\nValueError: no such model"):
        server.__enter__()


def test_comparison_ratios_are_tideflow_over_vllm():
    ours = {"request_rate": 1.0, "output_throughput": 30.0, "mean_ttft_ms": 100.0, "median_tpot_ms": None}
    theirs = {"output_throughput": 20.0, "mean_ttft_ms": 200.0, "median_tpot_ms": 50.0}
    c = compare(ours, theirs)
    assert c["metrics"]["output_throughput"]["tideflow/vllm"] == pytest.approx(1.5)
    assert c["metrics"]["mean_ttft_ms"]["tideflow/vllm"] == pytest.approx(0.5)
    assert c["metrics"]["median_tpot_ms"]["tideflow/vllm"] is None
    table = format_comparison(c, "default")
    assert "vLLM (default)" in table and "1.50" in table and "rate 1 req/s" in table


# -- the real peer -----------------------------------------------------------------------------
@pytest.mark.skipif(not (REPO / ".venv-vllm" / "bin" / "vllm").exists(), reason="no .venv-vllm (make bench-peers)")
def test_real_vllm_generates_the_requested_lengths(tmp_path):
    """Minutes, not seconds: vLLM compiles the model on first load."""
    from tideflow.testing.tiny_models import write_tiny_model

    # head_dim 64: vLLM's CPU attention has no kernel for the default tiny model's 16
    model = write_tiny_model("llama", tmp_path / "m", seed=0, hidden_size=128, num_attention_heads=2,
                             num_key_value_heads=1)
    trace = mixed_trace(2, 0, vocab_size=512, max_prompt=16, min_output=2, max_output=4)
    system = VllmOffline(str(model), "float32", "2t")
    try:
        gen = system.generate(trace)
    finally:
        system.close()
    assert [len(t) for t in gen.token_ids] == [r.max_tokens for r in trace]
    assert gen.wall_s > 0
