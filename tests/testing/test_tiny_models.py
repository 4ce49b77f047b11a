"""Tests of `tideflow.testing.tiny_models`: tiny random checkpoints that load offline."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors import safe_open
from transformers import GenerationConfig

from tideflow.models import load_model, load_tokenizer
from tideflow.models.loader import eos_token_ids
from tideflow.testing.tiny_models import (
    BOS_ID,
    EOS_ID,
    IM_END_ID,
    IM_START_ID,
    INITIALIZER_RANGE,
    KINDS,
    PAD_ID,
    SPECIAL_TOKENS,
    TOKENIZER_VOCAB_SIZE,
    tokenizer_json,
    write_tiny_model,
)

EXPECTED_COMMON = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
}
EXPECTED_KIND = {
    "llama": {"model_type": "llama"},
    "qwen2": {"model_type": "qwen2", "use_sliding_window": False, "sliding_window": None},
    "mixtral": {"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {
        "model_type": "qwen2_moe",
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "shared_expert_intermediate_size": 64,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "qkv_bias": True,
    },
    "mistral": {"model_type": "mistral", "sliding_window": 32},
    "qwen3": {"model_type": "qwen3", "head_dim": 16},
    "gemma": {"model_type": "gemma", "head_dim": 16, "hidden_act": "gelu_pytorch_tanh"},
    "phi3": {"model_type": "phi3"},
}
TEXTS = [
    "plain ascii text, with punctuation!?",
    "héllo wörld — naïve café, 東京タワー, Москва, emoji 🌊🚀 and combining e\u0301",
    'def f(x: int) -> int:\n\treturn {"k": [x ** 2, None]}  # comment\n\n',
    "   leading and trailing spaces   \r\n\x00\x7f",
]


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Run every test as if there were no hub: HF_HUB_OFFLINE=1 (env and the cached flag)."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """kind -> directory of a tiny checkpoint with the default config and seed 0."""
    root = tmp_path_factory.mktemp("tiny")
    return {kind: write_tiny_model(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def tokenizer(tiny_dirs):
    return load_tokenizer(str(tiny_dirs["llama"]))


@pytest.mark.parametrize("kind", KINDS)
def test_writes_complete_checkpoint(kind, tiny_dirs):
    path = tiny_dirs[kind]
    names = {p.name for p in path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    config = json.loads((path / "config.json").read_text())
    for key, value in {**EXPECTED_COMMON, **EXPECTED_KIND[kind]}.items():
        assert config[key] == value, key
    assert config["initializer_range"] == INITIALIZER_RANGE
    assert config["dtype"] == "float32"
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
        assert dtypes == {"F32"}
        assert f.get_slice("lm_head.weight").get_shape() == [512, 64]


@pytest.mark.parametrize("kind", KINDS)
def test_loads_through_load_model(kind, tiny_dirs):
    model, hf_config = load_model(str(tiny_dirs[kind]))
    assert hf_config is model.config
    assert hf_config.model_type == kind
    assert not model.training
    assert model.dtype == torch.float32
    head_dim = 64 // 4
    layer = model.model.layers[0]
    if kind == "phi3":  # q, k and v in one fused projection
        assert layer.self_attn.qkv_proj.weight.shape == ((4 + 2 * 2) * head_dim, 64)
    else:
        assert layer.self_attn.k_proj.weight.shape == (2 * head_dim, 64)  # GQA: 2 KV heads
        assert (layer.self_attn.q_proj.bias is not None) == (kind in ("qwen2", "qwen2_moe"))
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        logits = model(torch.tensor([[BOS_ID, 10, 20, 30]])).logits
    assert logits.shape == (1, 4, 512)
    assert torch.isfinite(logits).all()


def test_initializer_range_is_applied(tiny_dirs):
    with safe_open(str(tiny_dirs["llama"] / "model.safetensors"), "pt") as f:
        std = f.get_tensor("model.embed_tokens.weight").std().item()
    assert abs(std - INITIALIZER_RANGE) < 0.02


def test_config_overrides_replace_fields(tmp_path):
    path = write_tiny_model("llama", tmp_path, num_hidden_layers=3, hidden_size=96, vocab_size=600)
    config = json.loads((path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (3, 96, 600)
    assert config["num_attention_heads"] == 4  # untouched defaults stay
    model, _ = load_model(str(path))
    assert len(model.model.layers) == 3
    assert model.lm_head.weight.shape == (600, 96)


def test_newer_kinds_draw_their_norm_weights(tiny_dirs):
    """Norm weights away from their initial value, so parity tests see each one used."""
    with safe_open(str(tiny_dirs["qwen3"] / "model.safetensors"), "pt") as f:
        for name in ("model.layers.0.self_attn.q_norm.weight", "model.layers.0.input_layernorm.weight"):
            assert f.get_tensor(name).std() > INITIALIZER_RANGE / 2, name
    with safe_open(str(tiny_dirs["llama"] / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("model.norm.weight"), torch.ones(64))  # earlier kinds: unchanged


def test_phi3_rotates_half_of_each_head(tiny_dirs):
    config = json.loads((tiny_dirs["phi3"] / "config.json").read_text())
    assert config["rope_parameters"]["partial_rotary_factor"] == 0.5


def test_moe_override(tmp_path):
    path = write_tiny_model("qwen2_moe", tmp_path, num_experts=8, mlp_only_layers=[1])
    model, hf_config = load_model(str(path))
    assert hf_config.num_experts == 8
    assert hasattr(model.model.layers[0].mlp, "shared_expert")
    assert not hasattr(model.model.layers[1].mlp, "shared_expert")  # a dense layer


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="llama.*qwen2.*mixtral.*qwen2_moe"):
        write_tiny_model("gpt2", tmp_path / "a")
    with pytest.raises(ValueError, match="vocab_size"):
        write_tiny_model("llama", tmp_path / "b", vocab_size=TOKENIZER_VOCAB_SIZE - 1)
    with pytest.raises(ValueError, match="hiden_size"):
        write_tiny_model("llama", tmp_path / "c", hiden_size=32)
    assert not (tmp_path / "a").exists()


def test_same_seed_same_bytes_different_seed_different_weights(tmp_path, tiny_dirs):
    def digest(path):
        return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()

    again = write_tiny_model("mixtral", tmp_path / "again", seed=0)
    other = write_tiny_model("mixtral", tmp_path / "other", seed=1)
    assert digest(again) == digest(tiny_dirs["mixtral"])
    assert digest(other) != digest(again)
    with safe_open(str(again / "model.safetensors"), "pt") as a, safe_open(
        str(other / "model.safetensors"), "pt"
    ) as b:
        assert set(a.keys()) == set(b.keys())
        name = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(a.get_tensor(name), b.get_tensor(name))


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips(text, tokenizer):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids) == text


def test_tokenizer_is_a_trained_byte_level_bpe(tokenizer):
    spec = json.loads(tokenizer_json())
    assert spec["model"]["type"] == "BPE"
    assert spec["pre_tokenizer"]["type"] == "ByteLevel"
    assert spec["decoder"]["type"] == "ByteLevel"
    assert len(tokenizer) == TOKENIZER_VOCAB_SIZE
    assert len(spec["model"]["merges"]) > 200
    # Merges learned from the corpus: common words are single tokens and code compresses.
    assert len(tokenizer.encode(" return", add_special_tokens=False)) == 1
    code = TEXTS[2] * 4
    assert len(tokenizer.encode(code, add_special_tokens=False)) < 0.75 * len(code.encode())


def test_special_tokens_are_single_ids(tokenizer):
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.encode(token, add_special_tokens=False) == [expected_id]
        assert tokenizer.convert_tokens_to_ids(token) == expected_id
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        BOS_ID,
        EOS_ID,
        PAD_ID,
    )
    assert set(tokenizer.all_special_ids) == set(range(len(SPECIAL_TOKENS)))
    assert tokenizer.decode([IM_START_ID, 100, IM_END_ID, EOS_ID], skip_special_tokens=True) == (
        tokenizer.decode([100])
    )


def test_chat_template(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there 🌊"},
    ]
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert with_prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there 🌊<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert with_prompt.startswith(without) and not without.endswith("assistant\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids == tokenizer.encode(with_prompt, add_special_tokens=False)
    assert ids.count(IM_START_ID) == 3 and ids.count(IM_END_ID) == 2
    assert ids[0] == IM_START_ID


def test_generation_config_eos_matches_tokenizer(tiny_dirs, tokenizer):
    for kind in KINDS:
        generation_config = GenerationConfig.from_pretrained(tiny_dirs[kind])
        assert generation_config.eos_token_id == tokenizer.eos_token_id == EOS_ID
        assert generation_config.bos_token_id == BOS_ID
        assert generation_config.pad_token_id == PAD_ID
        hf_config = json.loads((tiny_dirs[kind] / "config.json").read_text())
        assert hf_config["eos_token_id"] == EOS_ID
    model, hf_config = load_model(str(tiny_dirs["qwen2"]))
    assert eos_token_ids(hf_config, model.generation_config, tokenizer) == {EOS_ID}


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_is_varied(kind, tiny_dirs, tokenizer):
    model, _ = load_model(str(tiny_dirs[kind]))
    prompts = ["def main():\n    return", "<|im_start|>user\nThe tide came in<|im_end|>\n"]
    for prompt in prompts:
        ids = [BOS_ID] + tokenizer.encode(prompt, add_special_tokens=False)
        out = model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False, eos_token_id=None)
        new = out[0, len(ids) :].tolist()
        assert len(new) == 30
        assert EOS_ID not in new[:5]
        assert len(set(new)) >= 10, new


def test_tokenizer_training_and_writing_are_fast(tmp_path):
    tokenizer_json.cache_clear()
    start = time.perf_counter()
    trained = tokenizer_json()
    assert time.perf_counter() - start < 2.0
    assert tokenizer_json() is trained  # cached
    write_tiny_model("qwen2_moe", tmp_path / "warm")  # imports the model classes
    start = time.perf_counter()
    write_tiny_model("qwen2_moe", tmp_path / "timed")
    assert time.perf_counter() - start < 1.0


def test_writes_and_loads_in_a_fresh_offline_process(tmp_path):
    script = textwrap.dedent(
        f"""
        import torch
        from tideflow.models import load_model, load_tokenizer
        from tideflow.testing.tiny_models import write_tiny_model
        path = write_tiny_model("qwen2", {str(tmp_path / "q")!r})
        model, _ = load_model(str(path))
        tok = load_tokenizer(str(path))
        ids = tok.apply_chat_template([{{"role": "user", "content": "hi"}}],
                                      add_generation_prompt=True, return_dict=False)
        out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
        print("OK", out.shape[1] - len(ids))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "OK 4" in result.stdout
