"""Builders for engine-core tests that need no model (vLLM's tests/v1/core/utils.py idea)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from tideflow.config import SchedulerConfig
from tideflow.runtime.engine.core.block_manager import BlockManager
from tideflow.runtime.engine.core.scheduler import Scheduler
from tideflow.runtime.engine.core.sequence import Sequence
from tideflow.sampling_params import SamplingParams

EOS = 0


def make_seq(prompt, max_tokens=8, rid="r", **params) -> Sequence:
    sp = SamplingParams(max_tokens=max_tokens, temperature=0, **params)
    return Sequence(rid, 0, list(prompt), len(prompt), sp, max_tokens)


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=8, budget=32, chunked=True, prefix=True, max_model_len=256):
    blocks = BlockManager(num_blocks, block_size, prefix)
    config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, enable_chunked_prefill=chunked)
    return Scheduler(config, blocks, eos_token_ids=frozenset({EOS}), max_model_len=max_model_len)


def fake_tokens(batch, token=7):
    """A stand-in for the model runner: every sampling row gets `token` (or token(seq))."""
    rows = batch.sampled_seqs
    ids = [token(s) if callable(token) else token for s in rows]
    return SimpleNamespace(token_ids=ids, logprobs=None)


def run_to_completion(sched, token=7, max_steps=10_000):
    steps = []
    for _ in range(max_steps):
        if not sched.num_unfinished:
            return steps
        batch = sched.schedule()
        steps.append(batch)
        sched.update(batch, fake_tokens(batch, token))
    raise AssertionError("scheduler did not finish")


def reference_allowed(logits, temperature, top_k, top_p, min_p):
    """Straightforward per-token reference of the filters; returns {token: renormalised prob}."""
    probs = torch.softmax(logits.double() / temperature, -1).tolist()
    order = sorted(range(len(probs)), key=lambda t: -probs[t])
    if top_k > 0:
        order = order[:top_k]
    total = sum(probs[t] for t in order)
    kept, mass = [], 0.0
    for t in order:
        if mass >= top_p:
            break
        kept.append(t)
        mass += probs[t] / total
    pmax = probs[kept[0]]
    kept = [t for t in kept if probs[t] >= min_p * pmax]
    z = sum(probs[t] for t in kept)
    return {t: probs[t] / z for t in kept}
