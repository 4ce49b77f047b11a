"""Embeddings (SamplingParams.pooling): the L2-normalized last-token or mean of the final
hidden states over the prompt equals transformers' in float64, whole, chunked, and on
transformers' forward."""

from __future__ import annotations

import pytest
import torch

from tideflow import LLM, SamplingParams

PROMPTS = [[5, 9, 11, 30, 41, 7, 8, 100, 3, 17] * 4, [12, 13]]
MODES = {
    "whole": dict(max_num_batched_tokens=1024),
    "chunked": dict(enable_chunked_prefill=True, max_num_batched_tokens=16),
    "transformers-forward": dict(model_impl="transformers", max_num_batched_tokens=16),
}


@pytest.fixture(scope="module")
def case(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    hidden = []
    for ids in PROMPTS:
        with torch.no_grad():
            hidden.append(model.model(torch.tensor([ids])).last_hidden_state[0])
    return path, hidden


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_embeddings_equal_transformers(case, mode, pooling):
    path, hidden = case
    llm = LLM(path, dtype="float64", **MODES[mode])
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], SamplingParams(max_tokens=1, pooling=pooling),
                        use_tqdm=False)
    for out, h in zip(outs, hidden):
        pooled = h[-1] if pooling == "last" else h.mean(dim=0)
        expected = torch.nn.functional.normalize(pooled, dim=0)
        assert torch.allclose(torch.tensor(out.embedding, dtype=torch.float64), expected, atol=1e-9)


def test_no_embedding_unless_asked(tiny_model_dir):
    (out,) = LLM(tiny_model_dir("llama"), dtype="float64").generate([{"prompt_token_ids": [5, 6]}],
                                                                      SamplingParams(max_tokens=1), use_tqdm=False)
    assert out.embedding is None


def test_pooled_and_sampled_requests_share_a_step(case):
    path, hidden = case
    llm = LLM(path, dtype="float64")
    plain = SamplingParams(temperature=0, max_tokens=5, prompt_logprobs=1)
    alone = llm.generate([{"prompt_token_ids": PROMPTS[1]}], plain, use_tqdm=False)[0]
    pooled, sampled = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                                   [SamplingParams(max_tokens=1, pooling="last"), plain], use_tqdm=False)
    assert sampled.outputs[0].token_ids == alone.outputs[0].token_ids and sampled.embedding is None
    assert sampled.prompt_logprobs == alone.prompt_logprobs
    expected = torch.nn.functional.normalize(hidden[0][-1], dim=0)
    assert torch.allclose(torch.tensor(pooled.embedding, dtype=torch.float64), expected, atol=1e-9)
