"""Sliding-window attention (Qwen2 / Mistral style): greedy tokens equal transformers'
`generate` in float64, and the engine gives back the KV blocks that leave the window, so a
sequence longer than the KV pool still runs."""

from __future__ import annotations

import random

import pytest
import torch

from tideflow import LLM, SamplingParams
from tideflow.testing.tiny_models import write_tiny_model

WINDOW = 24


@pytest.fixture(scope="module")
def sliding_case(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = str(write_tiny_model(
        "qwen2", tmp_path_factory.mktemp("sliding") / "qwen2", seed=1,
        use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0,
    ))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    assert set(model.config.layer_types) == {"sliding_attention"}
    rng = random.Random(0)
    prompts = [[rng.randrange(5, model.config.vocab_size) for _ in range(n)] for n in (3, 20, 25, 60, 97)]
    prompts.append(prompts[4][:70] + prompts[1])  # shares a prefix with the longest prompt
    reference = []
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False)
        reference.append(out[0, len(ids) :].tolist())
    return path, prompts, reference


@pytest.mark.parametrize("kernel_backend", ["auto", "torch"])
def test_greedy_tokens_equal_hf_generate(sliding_case, kernel_backend):
    path, prompts, reference = sliding_case
    # small blocks and chunks: blocks leave the window mid-prefill and while decoding
    llm = LLM(path, dtype="float64", block_size=4, max_num_batched_tokens=32, kernel_backend=kernel_backend)
    assert llm.engine.blocks.sliding_window == WINDOW
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for i, (o, r) in enumerate(zip(outputs, reference)):
        assert o.outputs[0].token_ids == r, f"prompt {i} ({len(prompts[i])} tokens)"
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_blocks


def test_a_sequence_longer_than_the_pool_runs_in_its_window(sliding_case):
    """137 tokens need 35 blocks of 4; the pool has 20. Only the window (plus a step's chunk)
    must be resident, so the request is admitted and matches HF."""
    path, prompts, reference = sliding_case
    llm = LLM(path, dtype="float64", block_size=4, max_num_batched_tokens=32, num_kv_blocks=20)
    engine = llm.engine
    engine.add_request("long", prompts[4], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    seq = engine.requests["long"].seqs[0]
    most_held = 0
    while engine.has_unfinished():
        engine.step()
        held = sum(b >= 0 for b in seq.block_table)
        most_held = max(most_held, held)
        if not seq.finished:
            assert seq.num_released_blocks > 0 or seq.num_computed_tokens < WINDOW + 4
    assert seq.output_token_ids == reference[4]
    assert most_held <= 20 and engine.scheduler.num_preemptions == 0
    assert engine.blocks.num_free_blocks == 20
