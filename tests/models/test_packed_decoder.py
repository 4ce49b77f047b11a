"""tideflow's packed decoder against transformers' own forward of the same model.

Token-level parity with `generate` for every architecture and scheduling mode is in
tests/runtime/engine/test_hf_parity.py; here: logits of mixed packed steps, the weight sharing of the
fused projections, and which models it refuses."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tideflow import LLM, SamplingParams
from tideflow.config import engine_config
from tideflow.models.packed_decoder import PackedDecoder, unsupported_reason
from tideflow.runtime.engine.attention import attend_function
from tideflow.runtime.engine.engine import _packed_decoder


def _step_logits(llm: LLM, steps: int) -> list[torch.Tensor]:
    """Logits of the engine's first `steps` scheduled batches (each also executed, to advance)."""
    engine, out = llm.engine, []
    for _ in range(steps):
        batch = engine.scheduler.schedule()
        out.append(engine.runner.forward_only(batch).clone())
        engine.scheduler.update(batch, engine.runner.execute(batch))
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mixtral", "qwen2_moe"])
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


def test_fused_projections_share_the_model_weights(tiny_model_dir):
    """Fusing q/k/v and gate/up re-points the model's parameters at views of the fused tensors:
    nothing is stored twice, and transformers' forward still computes what it did."""
    from tideflow.models import load_model

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


def test_model_impl_is_validated(tiny_model_dir):
    with pytest.raises(ValueError, match="model_impl must be one of"):
        engine_config(tiny_model_dir("llama"), model_impl="vllm")
    assert LLM(tiny_model_dir("llama"), model_impl="transformers").engine.runner.packed is None
