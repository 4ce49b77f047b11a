"""Warm-up at load: every compiled path runs once before the first request does.

The CPU kernels are numba functions compiled on first call (or loaded from numba's on-disk
cache), and torch builds its oneDNN primitives and allocator pools on first use. Left to the
first request, that costs it seconds of time to first token in a fresh environment. vLLM pays
the same price at start-up instead; so does tideflow, but only for what it actually runs:

- a fresh prompt of a block and a bit (dense prefill, cache writes, greedy sampling),
- a second prompt sharing that block (a prefix-cache hit: the paged prefill kernel) sampled
  twice (n=2) with top-k / top-p (the sampling kernels), all decoding a few tokens together (paged decode),
- a short prompt decoding alone (a one-token step),
- the paged prefill kernel once more on its own, for engines without prefix caching (where
  only a chunked prompt reaches it, and a warm-up prompt longer than the step budget would
  cost a full-budget prefill).

Everything the warm-up leaves is then wiped: its requests, the blocks it published to the
prefix cache and the cache's hit counters, so the engine looks freshly built. Its requests
carry their own seed, so the generator that seeds unseeded requests is not drawn from.
"""

from __future__ import annotations

import logging
import time

from tideflow.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

WARMUP_PREFIX = "tideflow-warmup-"
_DECODE_STEPS = 3


def warm_up(engine) -> float:
    """Run the warm-up requests through `engine` to completion, then forget them. Returns the
    seconds it took."""
    start = time.perf_counter()
    block = engine.blocks.block_size
    longest = engine.max_model_len - _DECODE_STEPS - 1
    if longest < 2:  # a context too short to hold the warm-up prompts: kernels compile on first use
        logger.info("warm-up skipped: max_model_len %d", engine.max_model_len)
        return 0.0
    first = 1 if engine.vocab_size > 2 else 0
    ids = [first + i % max(1, engine.vocab_size - first) for i in range(block + 3)]
    greedy = SamplingParams(temperature=0.0, max_tokens=_DECODE_STEPS, ignore_eos=True)
    sampled = SamplingParams(temperature=1.0, top_k=8, top_p=0.9, seed=0, n=2, max_tokens=_DECODE_STEPS,
                             ignore_eos=True)  # n=2: the kernel for several random rows, besides the one-row one
    prompts = [(ids[: min(len(ids), longest)], greedy), ((ids[:block] + ids[:2])[: longest], sampled)]
    names = []
    for i, (prompt, params) in enumerate(prompts):
        name = f"{WARMUP_PREFIX}{i}"
        engine.add_request(name, prompt, params)
        names.append(name)
        if i == 0:  # publish the first prompt's blocks before the second arrives (a prefix hit)
            engine.step()
    _run(engine, names)
    # a sequence decoding alone: its step's K/V rows are contiguous (a single token), a
    # layout the cache-write kernel is specialised for apart
    names.append(f"{WARMUP_PREFIX}{len(prompts)}")
    engine.add_request(names[-1], ids[:2], greedy)
    _run(engine, names)
    for name in names:
        engine.requests.pop(name, None)
    _paged_prefill_once(engine)
    engine.blocks.reset_prefix_cache()
    engine.blocks.stats = type(engine.blocks.stats)()
    engine.scheduler.num_preemptions = 0
    seconds = time.perf_counter() - start
    logger.info("warm-up: %d requests through every kernel in %.2f s", len(names), seconds)
    return seconds


def _run(engine, names: list[str]) -> None:
    while any(not engine.requests[n].finished for n in names if n in engine.requests):
        engine.step()


def _paged_prefill_once(engine) -> None:
    """The backend's paged prefill kernel on two query rows over block 0 of layer 0 (it only
    reads the cache), with the dtypes and layouts of the engine's own steps."""
    import torch

    from tideflow.runtime.engine.attention import attention_kernels

    cache = getattr(engine.runner, "kv_cache", None)
    if cache is None:  # a sharded runner: its ranks hold the cache
        return
    k_blocks, v_blocks = cache.blocks(0)
    kv_heads, dim, device = k_blocks.shape[2], k_blocks.shape[3], k_blocks.device
    q = torch.zeros((2, kv_heads, dim), dtype=k_blocks.dtype, device=device)
    index = lambda values: torch.tensor(values, dtype=torch.int64, device=device)  # noqa: E731
    attention_kernels(engine.config.kernel_backend).prefill(
        q, k_blocks, v_blocks, index([[0]]), index([0, 2]), index([2]), 1.0, 0
    )
