"""Request and sequence state: token ids, progress through the KV cache, status, sampling state.

A request with `n` completions owns `n` sequences sharing one prompt. The scheduler, the block
manager, the sampler and the detokenizer all read and update a `Sequence`; none of them keeps
a private copy of its tokens.
"""

from __future__ import annotations

import enum
import math
import itertools
from dataclasses import dataclass, field

from tideflow.outputs import CompletionOutput, Logprob, RequestOutput
from tideflow.runtime.engine.core.images import ImageInputs
from tideflow.sampling_params import SamplingParams

_seq_ids = itertools.count()


def check_prompt_ids(ids, vocab_size: int, max_model_len: int) -> list[int]:
    """The prompt's token ids as a list, or ValueError naming the field: empty, not integers,
    outside the vocabulary, or too long to generate one token in the context."""
    ids = list(ids)
    if not ids:
        raise ValueError("prompt_token_ids: the prompt is empty")
    if any(not isinstance(t, int) or isinstance(t, bool) for t in ids):
        raise ValueError("prompt_token_ids: token ids must be integers")
    lo, hi = min(ids), max(ids)
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"prompt_token_ids: token id {lo if lo < 0 else hi} is outside the vocabulary [0, {vocab_size})")
    if len(ids) >= max_model_len:
        raise ValueError(
            f"prompt_token_ids: the prompt has {len(ids)} tokens; the context length is {max_model_len} "
            "and at least one token must be generated"
        )
    return ids


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted and waiting to be recomputed
    RUNNING = "running"  # holds KV blocks and is scheduled every step
    FINISHED = "finished"  # stopped: its blocks are released


@dataclass(slots=True, eq=False)
class Sequence:
    """One completion in progress."""

    request_id: str
    index: int  # completion index within its request, 0..n-1
    token_ids: list[int]  # prompt followed by the generated tokens
    num_prompt_tokens: int
    params: SamplingParams
    max_tokens: int  # resolved output limit (params.max_tokens, or what the context leaves)
    arrival_time: float = 0.0  # wall-clock seconds (time.time())
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V sit in the cache
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache at admission
    block_table: list[int] = field(default_factory=list)  # logical block i -> physical block id
    block_hashes: list[bytes] = field(default_factory=list)  # hash of each full block, chained from the parent
    num_registered_blocks: int = 0  # leading blocks of block_table published in the prefix cache
    num_released_blocks: int = 0  # leading blocks given back after leaving the sliding window
    num_preemptions: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop string or stop token id
    # detokenizer state
    output_text: str = ""
    prefix_offset: int = 0  # start of the token window decoded as context
    read_offset: int = 0  # tokens up to here are already in output_text
    # sampler state
    sampling_seed: int | None = None  # int64 bits of the counter-based sampling seed; fixed at the first random draw
    logprobs: list[dict[int, Logprob]] | None = None
    # [None, then an entry per prompt token so far] when `wants_prompt_logprobs`
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    cumulative_logprob: float = 0.0
    first_token_time: float | None = None  # wall-clock seconds, set by the scheduler's clock
    finished_time: float | None = None  # wall-clock seconds, set by the scheduler's clock
    # pooling (params.pooling, first completion): the sum of the pooled hidden states so far, and how many
    pooled_sum: list[float] | None = None
    pooled_count: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] = ()  # the token sequences of params.bad_words
    # structured outputs: the grammar matcher over the output tokens (runtime/engine/structured's
    # SequenceMatcher), rebuilt from the tokens wherever it is None (adopted, replayed, restored)
    grammar: object | None = None
    images: ImageInputs | None = None  # the prompt's images (multimodal models), shared by a request's sequences
    request: Request | None = field(default=None, repr=False)  # the request it belongs to (None: adopted without one)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def wants_pooling(self) -> bool:
        """Whether this sequence pools its request's embedding (its first completion does)."""
        return self.params.pooling is not None and self.index == 0

    def embedding(self) -> list[float] | None:
        """The pooled hidden state (mean of the pooled rows), L2-normalized; None before any was pooled."""
        if self.pooled_sum is None:
            return None
        mean = [x / self.pooled_count for x in self.pooled_sum]
        norm = math.sqrt(sum(x * x for x in mean)) or 1.0
        return [x / norm for x in mean]

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Whether this sequence computes its request's prompt logprobs (its first completion
        does; the prefix cache is skipped for it, as the rows of cached tokens are not computed)."""
        return self.params.prompt_logprobs is not None and self.index == 0

    def completion(self) -> CompletionOutput:
        return CompletionOutput(
            index=self.index,
            text=self.output_text,
            token_ids=self.output_token_ids,
            cumulative_logprob=self.cumulative_logprob if self.logprobs is not None else None,
            logprobs=list(self.logprobs) if self.logprobs is not None else None,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )


@dataclass(slots=True, eq=False)
class Request:
    """One user request: a prompt and its sequences."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]  # completion index -> its sequence; each links back here
    arrival_time: float = 0.0

    def __post_init__(self):
        for seq in self.seqs:
            seq.request = self

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)

    def output(self) -> RequestOutput:
        first = [s.first_token_time for s in self.seqs if s.first_token_time is not None]
        metrics = {"arrival_time": self.arrival_time}
        if first:
            metrics["first_token_time"] = min(first)
        ends = [s.finished_time for s in self.seqs]
        if self.finished and all(t is not None for t in ends):
            metrics["finished_time"] = max(ends)
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[s.completion() for s in self.seqs],
            finished=self.finished,
            metrics=metrics,
            prompt_logprobs=list(self.seqs[0].prompt_logprobs or [None]) if self.params.prompt_logprobs is not None else None,
            embedding=self.seqs[0].embedding(),
        )
