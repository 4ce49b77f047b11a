"""Prompt logprobs equal log_softmax of transformers' own logits over the prompt (float64), in
every scheduling mode: whole prompts, chunked prefill, prefix caching (skipped for such
requests) and preemption; entry 0 is None, each entry holds the prompt token and the top-k."""

from __future__ import annotations

import random

import pytest
import torch

from tideflow import LLM, SamplingParams

MODES = {
    "whole": dict(enable_chunked_prefill=False, max_num_batched_tokens=1024),
    "chunked": dict(enable_chunked_prefill=True, max_num_batched_tokens=24),
    "prefix": dict(enable_prefix_caching=True, max_num_batched_tokens=1024, block_size=16),
    "preempt": dict(enable_prefix_caching=True, max_num_batched_tokens=64, num_kv_blocks=12, block_size=16),
    "transformers-forward": dict(model_impl="transformers", max_num_batched_tokens=24),
}


@pytest.fixture(scope="module")
def case(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    rng = random.Random(1)
    shared = [rng.randrange(5, model.config.vocab_size) for _ in range(40)]
    prompts = [shared + [rng.randrange(5, model.config.vocab_size) for _ in range(n)] for n in (3, 30, 1)]
    prompts.append([7])
    reference = []
    for ids in prompts:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        reference.append(logits.log_softmax(-1))
    return path, prompts, reference


@pytest.mark.parametrize("mode", list(MODES))
def test_prompt_logprobs_equal_transformers(case, mode):
    path, prompts, reference = case
    llm = LLM(path, dtype="float64", **MODES[mode])
    llm.generate([{"prompt_token_ids": prompts[0]}], SamplingParams(max_tokens=2), use_tqdm=False)  # warm the prefix cache
    params = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=2, logprobs=1)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for ids, ref, out in zip(prompts, reference, outs):
        got = out.prompt_logprobs
        assert len(got) == len(ids) and got[0] is None
        for pos in range(1, len(ids)):
            entry, expected = got[pos], ref[pos - 1]
            assert abs(entry[ids[pos]].logprob - expected[ids[pos]].item()) < 1e-9
            assert entry[ids[pos]].rank == int((expected > expected[ids[pos]]).sum()) + 1
            top = expected.topk(2)
            for rank, (value, token) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
                assert entry[token].rank == rank and abs(entry[token].logprob - value) < 1e-9
            assert len(entry) <= 3
        # the first sampled token's logprob comes from the last prompt row
        first = out.outputs[0].token_ids[0]
        assert abs(out.outputs[0].logprobs[0][first].logprob - ref[-1][first].item()) < 1e-9


def test_no_prompt_logprobs_unless_asked(tiny_model_dir):
    llm = LLM(tiny_model_dir("llama"), dtype="float64")
    (out,) = llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=2), use_tqdm=False)
    assert out.prompt_logprobs is None


def test_n_above_one_shares_the_prompt_logprobs(tiny_model_dir):
    llm = LLM(tiny_model_dir("llama"), dtype="float64")
    params = SamplingParams(n=2, max_tokens=2, prompt_logprobs=0, seed=3)
    (out,) = llm.generate([{"prompt_token_ids": [5, 6, 7, 8]}], params, use_tqdm=False)
    assert out.prompt_logprobs[0] is None and [len(e) for e in out.prompt_logprobs[1:]] == [1, 1, 1]


def test_prompt_logprobs_carry_decoded_tokens(tiny_model_dir):
    llm = LLM(tiny_model_dir("llama"), dtype="float64")
    tok = llm.get_tokenizer()
    (out,) = llm.generate(["hello there world"], SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)
    ids = out.prompt_token_ids
    for pos in range(1, len(ids)):
        assert out.prompt_logprobs[pos][ids[pos]].decoded_token == tok.decode([ids[pos]])
