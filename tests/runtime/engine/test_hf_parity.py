"""The correctness oracle: under greedy decoding in float64 the engine emits exactly the tokens
of transformers' own `generate`, run one prompt at a time, for every supported architecture and
every scheduling mode (chunked prefill, prefix caching, preemption)."""

from __future__ import annotations

import random

import pytest
import torch

from tideflow import LLM, SamplingParams
from tideflow.testing.tiny_models import KINDS  # llama, qwen2, mixtral, qwen2_moe, mistral, qwen3, gemma, phi3
NUM_PROMPTS = 18


def make_prompts(vocab_size: int, seed: int = 0):
    """Mixed lengths from 1 to 300 tokens; four prompts share a 120-token prefix, two are equal."""
    rng = random.Random(seed)
    tok = lambda n: [rng.randrange(5, vocab_size) for _ in range(n)]  # noqa: E731  (ids 0-4 are special)
    lengths = [1, 2, 5, 17, 31, 64, 100, 150, 200, 255, 300, 9]
    prompts = [tok(n) for n in lengths]
    shared = tok(120)
    prompts += [shared + tok(n) for n in (1, 16, 40, 77)]
    prompts += [list(prompts[-1]), list(prompts[5])]
    max_tokens = [rng.randrange(8, 33) for _ in prompts]
    assert len(prompts) == NUM_PROMPTS
    return prompts, max_tokens


@pytest.fixture(scope="module", params=KINDS)
def case(request, tiny_model_dir):
    """(model dir, prompts, max_tokens, HF reference outputs) for one architecture."""
    from transformers import AutoModelForCausalLM

    path = tiny_model_dir(request.param)
    # transformers' grouped_mm experts have no float64 kernel: its eager experts are the reference
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, experts_implementation="eager").eval()
    prompts, max_tokens = make_prompts(model.config.vocab_size)
    reference = []
    for ids, n in zip(prompts, max_tokens):
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
        reference.append(out[0, len(ids) :].tolist())
    return path, prompts, max_tokens, reference


MODES = {
    "chunked+prefix": dict(enable_chunked_prefill=True, enable_prefix_caching=True, max_num_batched_tokens=96),
    "chunked": dict(enable_chunked_prefill=True, enable_prefix_caching=False, max_num_batched_tokens=96),
    "whole+prefix": dict(enable_chunked_prefill=False, enable_prefix_caching=True, max_num_batched_tokens=1024, max_num_seqs=4),
    "whole": dict(enable_chunked_prefill=False, enable_prefix_caching=False, max_num_batched_tokens=1024),
    "preempt": dict(enable_prefix_caching=True, max_num_batched_tokens=256, num_kv_blocks=40, block_size=16),
    "torch-kernels": dict(kernel_backend="torch", max_num_batched_tokens=96),  # the kernels' references
    # transformers' own modules calling the tideflow attention function (the default is
    # tideflow's packed decoder, `tideflow.models.packed_decoder`)
    "transformers-forward": dict(model_impl="transformers", max_num_batched_tokens=96),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_greedy_tokens_equal_hf_generate(case, mode):
    path, prompts, max_tokens, reference = case
    llm = LLM(path, dtype="float64", **MODES[mode])
    params = [SamplingParams(temperature=0, max_tokens=n) for n in max_tokens]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    got = [o.outputs[0].token_ids for o in outputs]
    for i, (g, r) in enumerate(zip(got, reference)):
        assert g == r, f"prompt {i} ({len(prompts[i])} tokens): engine {g} != HF {r}"
    engine = llm.engine
    assert (engine.runner.packed is None) == (mode == "transformers-forward")
    if mode == "preempt" and not engine.blocks.sliding_window:
        # (mistral's 32-token window gives blocks back as it goes: 40 blocks never run out)
        assert engine.scheduler.num_preemptions > 0
    if "prefix" in mode:
        assert engine.blocks.stats.hits > 0
        # a second pass over the same prompts is served largely from the prefix cache, same tokens
        hits = engine.blocks.stats.hits
        again = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in again] == reference
        assert engine.blocks.stats.hits - hits >= sum(len(p) for p in prompts) // 2
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
