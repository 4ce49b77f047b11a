"""Seeded synthetic request traces for the benchmarks.

`mixed_trace` is shaped like ShareGPT: prompt and output lengths are long-tailed (lognormal
draws, clipped to their ranges), so most requests are short and a few are long.
`shared_prefix_trace` gives every request the same long system prompt followed by its own
suffix (the prefix-cache workload). Token ids are uniform over [FIRST_ID, vocab_size): the
ids below FIRST_ID are the special tokens of the tiny models. A seed fixes the whole trace.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

FIRST_ID = 5  # ids 0-4 are special tokens (<s>, </s>, <pad>, <|im_start|>, <|im_end|>)

# The structured-output benchmark's constraints, by `--structured` name. The JSON schema is a
# record with free-text fields, the shape of typical extraction outputs; its strings are
# unbounded, so a random model's greedy output rarely closes them and runs to max_tokens like
# the unconstrained run, and the two runs generate the same number of tokens.
STRUCTURED_WORKLOADS = {
    "json": {"json": {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
            "summary": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["title", "year", "summary", "tags"],
        "additionalProperties": False,
    }},
}

# Lengths are lognormal, placed on the log scale of their range [lo, hi] so that the shape
# survives overridden ranges: the median sits at lo * (hi / lo) ** MEDIAN_AT and sigma is
# SIGMA_PER_LOG_RANGE * ln(hi / lo); draws are rounded and clipped to the range. With the
# default ranges (16-1024, 8-512) prompts have median 128 and mean ~200, outputs median ~97
# and mean ~150, with tails reaching the clip limits: roughly ShareGPT's shape.
PROMPT_MEDIAN_AT, OUTPUT_MEDIAN_AT = 0.5, 0.6
SIGMA_PER_LOG_RANGE = 0.25


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One offline request: what to feed and how many tokens to generate (EOS ignored)."""

    prompt_token_ids: list[int]  # [prompt_len] ids in [FIRST_ID, vocab_size)
    max_tokens: int  # exact number of tokens to generate


def _check(name: str, lo: int, hi: int) -> None:
    if not 1 <= lo <= hi:
        raise ValueError(f"{name}: need 1 <= min <= max, got {lo}..{hi}")


def _lognormal_lengths(rng: np.random.Generator, n: int, lo: int, hi: int, median_at: float) -> np.ndarray:
    """`n` long-tailed integer lengths in [lo, hi] (see SIGMA_PER_LOG_RANGE)."""
    log_range = np.log(hi / lo)
    mu = np.log(lo) + median_at * log_range
    draws = rng.lognormal(mean=mu, sigma=SIGMA_PER_LOG_RANGE * log_range, size=n)
    return np.clip(np.rint(draws), lo, hi).astype(np.int64)


def _token_ids(rng: np.random.Generator, n: int, vocab_size: int) -> list[int]:
    return rng.integers(FIRST_ID, vocab_size, size=n).tolist()


def mixed_trace(
    num_requests: int,
    seed: int = 0,
    *,
    vocab_size: int,
    min_prompt: int = 16,
    max_prompt: int = 1024,
    min_output: int = 8,
    max_output: int = 512,
) -> list[TraceRequest]:
    """`num_requests` requests with long-tailed prompt and output lengths (ShareGPT-like)."""
    if num_requests < 0:
        raise ValueError(f"num_requests must be non-negative, got {num_requests}")
    if vocab_size <= FIRST_ID:
        raise ValueError(f"vocab_size must exceed {FIRST_ID} (the special tokens), got {vocab_size}")
    _check("prompt lengths", min_prompt, max_prompt)
    _check("output lengths", min_output, max_output)
    rng = np.random.default_rng(seed)
    prompt_lens = _lognormal_lengths(rng, num_requests, min_prompt, max_prompt, PROMPT_MEDIAN_AT)
    output_lens = _lognormal_lengths(rng, num_requests, min_output, max_output, OUTPUT_MEDIAN_AT)
    return [
        TraceRequest(_token_ids(rng, int(p), vocab_size), int(o)) for p, o in zip(prompt_lens, output_lens)
    ]


def shared_prefix_trace(
    num_requests: int,
    seed: int = 0,
    *,
    vocab_size: int,
    prefix_len: int = 512,
    min_suffix: int = 16,
    max_suffix: int = 128,
    min_output: int = 8,
    max_output: int = 128,
) -> list[TraceRequest]:
    """`num_requests` requests that all start with the same `prefix_len` tokens, followed by a
    suffix of uniform length in [min_suffix, max_suffix]; outputs are long-tailed as in `mixed_trace`."""
    if num_requests < 0:
        raise ValueError(f"num_requests must be non-negative, got {num_requests}")
    if vocab_size <= FIRST_ID:
        raise ValueError(f"vocab_size must exceed {FIRST_ID} (the special tokens), got {vocab_size}")
    if prefix_len < 1:
        raise ValueError(f"prefix_len must be positive, got {prefix_len}")
    _check("suffix lengths", min_suffix, max_suffix)
    _check("output lengths", min_output, max_output)
    rng = np.random.default_rng(seed)
    prefix = _token_ids(rng, prefix_len, vocab_size)
    suffix_lens = rng.integers(min_suffix, max_suffix + 1, size=num_requests)
    output_lens = _lognormal_lengths(rng, num_requests, min_output, max_output, OUTPUT_MEDIAN_AT)
    return [
        TraceRequest(prefix + _token_ids(rng, int(s), vocab_size), int(o)) for s, o in zip(suffix_lens, output_lens)
    ]


def trace_stats(trace: list[TraceRequest]) -> dict[str, float]:
    """Sizes of a trace: request count, token totals, and mean / median / max lengths."""
    prompts = [len(r.prompt_token_ids) for r in trace] or [0]
    outputs = [r.max_tokens for r in trace] or [0]
    return {
        "num_requests": len(trace),
        "prompt_tokens": sum(prompts),
        "output_tokens": sum(outputs),
        "prompt_len_mean": statistics.fmean(prompts),
        "prompt_len_median": statistics.median(prompts),
        "prompt_len_max": max(prompts),
        "output_len_mean": statistics.fmean(outputs),
        "output_len_median": statistics.median(outputs),
        "output_len_max": max(outputs),
    }
