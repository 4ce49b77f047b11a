"""`tideflow bench gpu-check` off a GPU: it skips cleanly (module, CLI and `tools/gpu_check.sh`),
its bandwidth-floor arithmetic matches real model shapes, and its comparison and timing path
runs end to end on a tiny model on the CPU."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tideflow.bench import gpu_check
from tideflow.bench.gpu_check import (
    GPU_MODEL_CONFIG, NO_CUDA_MESSAGE, agreement, decode_step_bytes, llama_weight_count, mean_decode_contexts, passed,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_main_without_cuda_skips_and_says_so(no_cuda, tmp_path, capsys):
    path = tmp_path / "gpu.json"
    assert gpu_check.main(["--json", str(path)]) == 0
    assert NO_CUDA_MESSAGE in capsys.readouterr().out
    assert json.loads(path.read_text()) == {"skipped": True, "reason": "no CUDA device"}


def test_cli_routes_to_the_gpu_check(no_cuda, capsys):
    from tideflow.cli import main

    assert main(["bench", "gpu-check"]) == 0
    assert NO_CUDA_MESSAGE in capsys.readouterr().out


def test_python_dash_m_skips_with_no_visible_device():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tideflow.bench.gpu_check"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert NO_CUDA_MESSAGE in proc.stdout


def test_bad_options_exit_2(capsys):
    assert gpu_check.main(["--prompts", "0"]) == 2


def test_gpu_check_script_skips_before_installing_anything_without_a_gpu(tmp_path):
    """A failing `nvidia-smi` first on PATH stands for a machine without a GPU (on this one and
    on a GPU machine alike): the script must stop before it creates its venv."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    venv, out = tmp_path / "venv", tmp_path / "gpu-check.json"
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "GPU_CHECK_VENV": str(venv),
           "GPU_CHECK_JSON": str(out)}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device: skipping" in proc.stdout
    assert not venv.exists()
    result = json.loads(out.read_text())
    assert result["skipped"] is True and result["steps"] == []


# -- the bandwidth floor ------------------------------------------------------------------------
def test_weight_count_of_the_1b_config():
    counts = llama_weight_count(GPU_MODEL_CONFIG)
    # per layer: q 2048x2048, k and v 2048x512, o 2048x2048, MLP 3 x 2048x5632, two norms
    per_layer = 4_194_304 + 2 * 1_048_576 + 4_194_304 + 34_603_008 + 4096
    assert counts == {"embedding": 65_536_000, "layers": 16 * per_layer, "head": 2048 + 65_536_000}
    assert sum(counts.values()) == 852_559_872


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("explicit_head_dim", [None, 24])
def test_weight_count_matches_a_transformers_llama(tied, explicit_head_dim):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 300, "tie_word_embeddings": tied}
    if explicit_head_dim:
        fields["head_dim"] = explicit_head_dim
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**fields))
    numel = sum(p.numel() for p in model.parameters())  # a tied LM head is the embedding's parameter
    assert sum(llama_weight_count(LlamaConfig(**fields).to_dict()).values()) == numel


def test_decode_step_bytes_reads_weights_once_and_every_context():
    b = decode_step_bytes(GPU_MODEL_CONFIG, [100, 300], dtype_bytes=2)
    counts = llama_weight_count(GPU_MODEL_CONFIG)
    assert b["weights"] == 2 * (counts["layers"] + counts["head"] + 2 * 2048)  # two embedding rows
    assert b["kv"] == 400 * (2 * 16 * 8 * 64) * 2  # K and V of 400 tokens in 16 layers, 8 heads of 64
    assert b["total"] == b["weights"] + b["kv"]
    tied = decode_step_bytes({**GPU_MODEL_CONFIG, "tie_word_embeddings": True}, [100], dtype_bytes=4)
    assert tied["weights"] == 4 * (counts["layers"] + 2048 + counts["embedding"])  # the head is the embedding


def test_mean_decode_contexts_and_floor_seconds():
    assert mean_decode_contexts([10, 20], 4) == [12.5, 22.5]  # contexts 11..14 and 21..24
    assert gpu_check.floor_seconds(4_000_000_000, 2e12) == 0.002


def test_agreement_measures_the_prefix_before_the_first_difference():
    a = agreement([[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 3, 4], [5, 6, 0, 8]])
    assert a == {"identical": 1, "prompts": 2, "matched_prefix": [4, 2], "mean_prefix_fraction": 0.75,
                 "first_tokens_agree": True}
    assert passed(a)
    first_differs = agreement([[1, 2], [3, 4]], [[1, 2], [9, 4]])
    assert not first_differs["first_tokens_agree"] and not passed(first_differs)
    drifted = agreement([[1, 2, 3, 4]], [[1, 9, 9, 9]])
    assert drifted["first_tokens_agree"] and not passed(drifted)  # 25% < MIN_PREFIX_AGREEMENT


# -- the whole path on a tiny model on the CPU ---------------------------------------------------
def test_gpu_model_writes_the_config_dtype_once(tmp_path):
    config = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 1, "vocab_size": 600, "dtype": "bfloat16"}
    path = gpu_check.gpu_model(tmp_path / "m", device="cpu", config=config)
    from safetensors import safe_open

    with safe_open(path / "model.safetensors", "pt") as st:
        assert {st.get_tensor(k).dtype for k in st.keys()} == {__import__("torch").bfloat16}
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert gpu_check.gpu_model(path, device="cpu", config=config) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not written again


def test_run_agrees_with_transformers_and_times_decode_on_cpu(tiny_model_dir):
    result = gpu_check.run(Path(tiny_model_dir("llama")), 3, 6, 4, device="cpu", dtype="float32", max_prompt_len=40)
    assert result["agreement"]["identical"] == 3 and result["passed"]
    assert [t["batch"] for t in result["decode"]] == [1, 3]
    for t in result["decode"]:
        assert t["step_ms"] > 0 and t["floor_ms"] > 0 and t["floor_fraction"] == pytest.approx(t["floor_ms"] / t["step_ms"])
    text = gpu_check.format_result(result)
    assert "3/3 prompts identical" in text and "decode step, batch 3" in text and text.endswith("PASS")
