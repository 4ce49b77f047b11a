"""tideflow's packed decoder against transformers' own forward of the same model.

Token-level parity with `generate` for every architecture and scheduling mode is in
tests/runtime/engine/test_hf_parity.py; here: logits of one prompt against transformers' own
forward, logits of mixed packed steps, the weight sharing of the fused projections, which
models it refuses and the log line that says which path a model takes."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel

from tideflow import LLM, SamplingParams
from tideflow.config import engine_config
from tideflow.models import load_model
from tideflow.models.packed_decoder import PackedDecoder, unsupported_reason
from tideflow.runtime.engine.attention import AttentionMetadata, PagedKVCache, attend_function
from tideflow.runtime.engine.engine import _packed_decoder
from tideflow.testing.tiny_models import KINDS

ENGINE_LOGGER = "tideflow.runtime.engine.engine"


@pytest.mark.parametrize("kind", KINDS)
def test_logits_of_every_position_equal_transformers_in_float64(tiny_model_dir, kind):
    """One 70-token prompt, every position's logits, against the model's own forward (SDPA):
    the packed path's norms, projections, rotary, embeddings and windows (mistral's 32) are
    transformers' numerics, not just close to them."""
    model, config = load_model(tiny_model_dir(kind), dtype="float64")
    text = config.get_text_config()
    ids = torch.arange(5, 75)
    with torch.no_grad():
        want = model(ids[None]).logits[0]
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    cache = PagedKVCache.allocate(text.num_hidden_layers, 10, 8, text.num_key_value_heads, head_dim, torch.float64, "cpu")
    meta = AttentionMetadata(cache, torch.arange(len(ids)), [], None, [(0, len(ids))])
    decoder = PackedDecoder(model, attend_function())
    got = decoder(ids, torch.arange(len(ids)), meta, torch.arange(len(ids)))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _step_logits(llm: LLM, steps: int) -> list[torch.Tensor]:
    """Logits of the engine's first `steps` scheduled batches (each also executed, to advance)."""
    engine, out = llm.engine, []
    for _ in range(steps):
        batch = engine.scheduler.schedule()
        out.append(engine.runner.forward_only(batch).clone())
        engine.scheduler.update(batch, engine.runner.execute(batch))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_logits_equal_transformers_forward_on_mixed_steps(tiny_model_dir, kind):
    """Fresh prompts, chunks over a cached prefix (a 40-token budget splits the long prompts),
    prefix hits (two prompts share 32 tokens) and decode rows, all in the same steps."""
    path = tiny_model_dir(kind)
    prompts = [list(range(5, 75)), list(range(5, 37)) + [9, 8, 7], [11], list(range(20, 57))]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    logits = {}
    for impl in ("transformers", "tideflow"):
        llm = LLM(path, dtype="float64", model_impl=impl, max_num_batched_tokens=40, block_size=8)
        for i, p in enumerate(prompts):
            llm.engine.add_request(str(i), p, params)
        logits[impl] = _step_logits(llm, 8)
    assert [x.shape for x in logits["tideflow"]] == [x.shape for x in logits["transformers"]]
    assert sum(x.shape[0] for x in logits["tideflow"]) > len(prompts)  # decode rows were compared too
    for step, (got, want) in enumerate(zip(logits["tideflow"], logits["transformers"])):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"step {step}")


FUSABLE = {"llama", "qwen2", "mistral", "mixtral", "qwen2_moe"}  # Llama norms, full rotary, no q/k norms


@pytest.mark.parametrize("kind", KINDS)
def test_float32_fused_path_equals_the_op_by_op_path_on_mixed_steps(tiny_model_dir, kind):
    """float32 on CPU runs the fused kernels (residual add + norm, rotary + cache write) and the
    oneDNN-prepacked projections where a model allows them; their logits are the op-by-op
    path's to float32 rounding, on fresh prompts, chunks, prefix hits and decode rows of 1, 2
    and more rows (the prepacked matmul starts at 3)."""
    path = tiny_model_dir(kind)
    prompts = [list(range(5, 75)), list(range(5, 37)) + [9, 8, 7], [11], list(range(20, 57))]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    logits = {}
    for fused in (True, False):
        llm = LLM(path, dtype="float32", max_num_batched_tokens=40, block_size=8)
        decoder = llm.engine.runner.packed
        assert decoder.fused == (kind in FUSABLE)
        decoder.fused = decoder.fused and fused
        for i, p in enumerate(prompts):
            llm.engine.add_request(str(i), p, params)
        logits[fused] = _step_logits(llm, 8)
    for step, (got, want) in enumerate(zip(logits[True], logits[False])):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"step {step}")


def test_fused_projections_share_the_model_weights(tiny_model_dir):
    """Fusing q/k/v and gate/up re-points the model's parameters at views of the fused tensors:
    nothing is stored twice, and transformers' forward still computes what it did."""
    model, _ = load_model(tiny_model_dir("llama"), dtype="float64")
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = model(x).logits
    decoder = PackedDecoder(model, attend_function())
    layer, attn = decoder.layers[0], model.model.layers[0].self_attn
    fused = layer.qkv_weight
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    mlp = model.model.layers[0].mlp
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == layer.gate_up_weight.untyped_storage().data_ptr()
    assert fused.shape[0] == attn.q_proj.out_features + 2 * attn.k_proj.out_features
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)


def test_unsupported_models_are_named_and_kept_on_transformers():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)).eval()
    reason = unsupported_reason(model)
    assert reason is not None and "GPT2LMHeadModel" in reason
    with pytest.raises(ValueError, match="PackedDecoder cannot run this model"):
        PackedDecoder(model, attend_function())
    attend = attend_function()
    assert _packed_decoder(model, "auto", attend) is None  # auto falls back to transformers
    with pytest.raises(ValueError, match="model_impl='tideflow'.*GPT2LMHeadModel"):
        _packed_decoder(model, "tideflow", attend)


def test_phi3_fused_projections_are_used_as_they_are(tiny_model_dir):
    model, _ = load_model(tiny_model_dir("phi3"), dtype="float64")
    decoder = PackedDecoder(model, attend_function())
    layer, block = decoder.layers[0], model.model.layers[0]
    assert layer.qkv_weight is block.self_attn.qkv_proj.weight
    assert layer.gate_up_weight is block.mlp.gate_up_proj.weight
    assert (layer.heads, layer.kv_heads) == (4, 2)


def _tiny_gemma2(**overrides) -> Gemma2ForCausalLM:
    config = Gemma2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, **overrides,
    )
    return Gemma2ForCausalLM(config).eval()


def test_gemma2_is_refused_naming_what_the_packed_path_lacks():
    assert "uses attention logit soft-capping" in unsupported_reason(_tiny_gemma2())
    no_attention_cap = _tiny_gemma2(attn_logit_softcapping=None)
    assert "uses final logit soft-capping" in unsupported_reason(no_attention_cap)
    uncapped = _tiny_gemma2(attn_logit_softcapping=None, final_logit_softcapping=None)
    assert unsupported_reason(uncapped) == "final norm Gemma2RMSNorm is not a known RMSNorm"


def test_a_layer_with_parts_outside_the_llama_pattern_is_refused(tiny_model_dir):
    """Known classes are not enough: a norm the residual pattern has no place for is named."""
    model, _ = load_model(tiny_model_dir("gemma"), dtype="float64")
    layer = model.model.layers[1]
    layer.pre_feedforward_layernorm = type(layer.input_layernorm)(64)
    assert unsupported_reason(model) == "layer 1: GemmaDecoderLayer also has pre_feedforward_layernorm"


def test_the_transformers_forward_refuses_attention_soft_capping():
    """tideflow's attention function has no soft-cap; ignoring one would change every score."""
    from tideflow.runtime.engine.attention import make_attention, attention_kernels

    attention = make_attention(attention_kernels("torch"), attention_kernels("torch"))
    attn = _tiny_gemma2().model.layers[0].self_attn
    q = torch.zeros(1, 2, 3, 16)
    with pytest.raises(ValueError, match="Gemma2Attention asks for attention logit soft-capping \\(softcap=50.0\\)"):
        attention(attn, q, q[:, :1], q[:, :1], None, scaling=0.25, softcap=attn.config.attn_logit_softcapping)


def test_the_path_a_model_takes_is_logged(tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger=ENGINE_LOGGER)
    LLM(tiny_model_dir("qwen3"), dtype="float64")
    assert ("Qwen3ForCausalLM: packed decoder") in caplog.messages
    caplog.clear()
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)).eval()
    assert _packed_decoder(gpt2, "auto", attend_function()) is None
    [message] = [r.getMessage() for r in caplog.records if r.name == ENGINE_LOGGER]
    assert message.startswith("GPT2LMHeadModel: transformers forward (GPT2LMHeadModel has no ")
    caplog.clear()
    LLM(tiny_model_dir("qwen3"), dtype="float64", model_impl="transformers")
    assert "Qwen3ForCausalLM: transformers forward (model_impl='transformers')" in caplog.messages


def test_model_impl_is_validated(tiny_model_dir):
    with pytest.raises(ValueError, match="model_impl must be one of"):
        engine_config(tiny_model_dir("llama"), model_impl="vllm")
    assert LLM(tiny_model_dir("llama"), model_impl="transformers").engine.runner.packed is None


def test_float32_fused_path_without_onednn_runs_on_f_linear(tiny_model_dir, monkeypatch):
    """A torch without oneDNN keeps the fused kernels and runs the projections through
    `F.linear`: the same logits as the op-by-op path."""
    import tideflow.models.packed_decoder as packed_decoder

    monkeypatch.setattr(packed_decoder, "prepacking_available", lambda: False)
    path = tiny_model_dir("qwen2")  # q/k/v biases
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    logits = {}
    for fused in (True, False):
        llm = LLM(path, dtype="float32", max_num_batched_tokens=40, block_size=8)
        decoder = llm.engine.runner.packed
        assert decoder.fused and decoder.lm_head_packed is None
        decoder.fused = fused
        for i, p in enumerate([list(range(5, 60)), [11, 12]]):
            llm.engine.add_request(str(i), p, params)
        logits[fused] = _step_logits(llm, 4)
    for got, want in zip(logits[True], logits[False]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
