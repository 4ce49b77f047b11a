"""A seeded mixed-length workload and its in-process reference, shared by graph tests."""

from __future__ import annotations

import random

from tideflow import LLM, SamplingParams


def mixed_requests(vocab_size: int, count: int = 32, seed: int = 0):
    rng = random.Random(seed)
    prompts = [{"prompt_token_ids": [rng.randrange(5, vocab_size) for _ in range(rng.randrange(1, 250))]} for _ in range(count)]
    params = [SamplingParams(temperature=0, max_tokens=rng.randrange(2, 24)) for _ in range(count)]
    return prompts, params


def reference_tokens(model_dir: str, prompts, params) -> list[list[int]]:
    llm = LLM(model_dir, dtype="float64")
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
