"""Tests of `tideflow.models.loader`."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import transformers
from transformers import AttentionInterface, GenerationConfig, LlamaConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import tideflow.models
from tideflow.models import load_model, load_tokenizer, resolve_dtype
from tideflow.models.loader import eos_token_ids, model_max_len
from tideflow.testing.tiny_models import EOS_ID, IM_END_ID, write_tiny_model


@pytest.fixture(scope="module", autouse=True)
def offline():
    """HF_HUB_OFFLINE=1 for every test (env and the flag huggingface_hub cached at import)."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return write_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def test_public_api_and_light_import():
    assert set(tideflow.models.__all__) >= {"load_model", "load_tokenizer", "resolve_dtype"}
    assert all(callable(getattr(tideflow.models, name)) for name in tideflow.models.__all__)
    code = "import sys, tideflow.models; assert 'torch' not in sys.modules; " \
           "assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- resolve_dtype ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "device", "expected"),
    [
        (torch.bfloat16, "cpu", torch.float32),
        (torch.float16, "cpu", torch.float32),
        (torch.bfloat16, "cuda", torch.bfloat16),
        (torch.float16, "cuda:0", torch.float16),
        ("bfloat16", "cuda", torch.bfloat16),
        ("torch.float16", "cuda", torch.float16),
        (torch.float32, "cuda", torch.float32),
        (torch.float64, "cpu", torch.float64),
        (None, "cpu", torch.float32),
        (None, "cuda", torch.float32),
    ],
)
def test_resolve_dtype_auto(checkpoint, device, expected):
    assert resolve_dtype("auto", SimpleNamespace(dtype=checkpoint), device) == expected


def test_resolve_dtype_auto_reads_legacy_torch_dtype_and_real_configs():
    assert resolve_dtype("auto", SimpleNamespace(torch_dtype="bfloat16"), "cuda") == torch.bfloat16
    assert resolve_dtype("auto", SimpleNamespace(), "cuda") == torch.float32
    # transformers 5 turns a `torch_dtype` kwarg / json key into `dtype`.
    assert resolve_dtype("auto", LlamaConfig(torch_dtype="bfloat16"), "cuda") == torch.bfloat16
    assert resolve_dtype("auto", LlamaConfig(dtype="float16"), "cpu") == torch.float32
    assert resolve_dtype("auto", LlamaConfig(), "cuda") == torch.float32


def test_resolve_dtype_explicit():
    config = SimpleNamespace(dtype=torch.bfloat16)
    assert resolve_dtype("float32", config, "cuda") == torch.float32
    assert resolve_dtype("float64", config) == torch.float64
    assert resolve_dtype("bfloat16", config, "cpu") == torch.bfloat16  # asked for explicitly
    assert resolve_dtype("float16", None, "cpu") == torch.float16
    with pytest.raises(ValueError, match="int8"):
        resolve_dtype("int8", config)


# --- load_model / load_tokenizer ------------------------------------------------------------


def test_load_model_missing_directory_names_the_path(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ValueError, match=str(missing)):
        load_model(str(missing))
    with pytest.raises(ValueError, match="nope"):
        load_model("./nope")
    with pytest.raises(ValueError, match=str(missing)):
        load_tokenizer(str(missing))


def test_load_model_directory_without_config_names_the_path(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=f"{tmp_path}.*config.json"):
        load_model(str(tmp_path))


def test_hub_ids_are_passed_through(monkeypatch):
    seen = []

    def fake_from_pretrained(source, **kwargs):
        seen.append(source)
        raise OSError("no network in this test")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    with pytest.raises(OSError, match="no network"):
        load_model("some-org/some.model_v2")
    with pytest.raises(OSError, match="no network"):
        load_tokenizer("some-org/tokenizer")
    assert seen == ["some-org/some.model_v2", "some-org/tokenizer"]


def test_load_model_defaults(llama_dir):
    model, hf_config = load_model(str(llama_dir))
    assert hf_config is model.config
    assert not model.training
    assert model.dtype == torch.float32
    assert model.device == torch.device("cpu")
    assert hf_config._attn_implementation in ("sdpa", "eager")


@pytest.mark.parametrize(("dtype", "expected"), [("float64", torch.float64), ("bfloat16", torch.bfloat16)])
def test_load_model_dtype(llama_dir, dtype, expected):
    model, _ = load_model(str(llama_dir), dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_load_model_registered_attention(llama_dir):
    calls = []

    def counting_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append(tuple(query.shape))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("tideflow_test_counting", counting_attention)
    model, hf_config = load_model(str(llama_dir), attn_implementation="tideflow_test_counting")
    assert hf_config._attn_implementation == "tideflow_test_counting"
    reference, _ = load_model(str(llama_dir), attn_implementation="eager")
    assert reference.config._attn_implementation == "eager"
    ids = torch.tensor([[0, 50, 60, 70, 80]])
    with torch.no_grad():
        got = model(ids).logits
        want = reference(ids).logits
    assert calls == [(1, 4, 5, 16)] * 2  # (batch, heads, tokens, head_dim) per layer
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_load_model_unknown_attention_fails(llama_dir):
    with pytest.raises(ValueError, match="no_such_attention"):
        load_model(str(llama_dir), attn_implementation="no_such_attention")


def test_load_tokenizer(llama_dir):
    tokenizer = load_tokenizer(str(llama_dir))
    assert tokenizer.eos_token_id == EOS_ID
    assert tokenizer.decode(tokenizer.encode("héllo 🌊", add_special_tokens=False)) == "héllo 🌊"


# --- model_max_len / eos_token_ids ---------------------------------------------------------------


def test_model_max_len(llama_dir):
    _, hf_config = load_model(str(llama_dir))
    assert model_max_len(hf_config) == 1024
    assert model_max_len(SimpleNamespace(n_positions=512)) == 512
    assert model_max_len(SimpleNamespace(max_position_embeddings=None, seq_length=4096)) == 4096
    assert model_max_len(SimpleNamespace()) == 2048
    assert model_max_len(LlamaConfig(max_position_embeddings=8192)) == 8192


def test_eos_token_ids_collects_every_source():
    generation_config = GenerationConfig(eos_token_id=[1, IM_END_ID])
    hf_config = SimpleNamespace(eos_token_id=7)
    tokenizer = SimpleNamespace(eos_token_id=9)
    assert eos_token_ids(hf_config, generation_config, tokenizer) == {1, IM_END_ID, 7, 9}
    assert eos_token_ids(SimpleNamespace(eos_token_id=None), None, tokenizer) == {9}
    assert eos_token_ids(None, None, None) == set()
    assert eos_token_ids(hf_config, SimpleNamespace(eos_token_id=(3, 4)), None) == {3, 4, 7}


def test_eos_token_ids_of_a_tiny_checkpoint(llama_dir):
    model, hf_config = load_model(str(llama_dir))
    tokenizer = load_tokenizer(str(llama_dir))
    generation_config = GenerationConfig.from_pretrained(llama_dir)
    assert eos_token_ids(hf_config, generation_config, tokenizer) == {EOS_ID}
    assert eos_token_ids(hf_config, model.generation_config, tokenizer) == {EOS_ID}
