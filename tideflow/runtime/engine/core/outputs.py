"""The records an engine hands back: what one step produced (`EngineOutput`) and how full it
is (`EngineStats`).

Torch-free. `EngineOutput` is a set of columns, one row per completion that sampled tokens in
the step, not a record per row: a step allocates a handful of lists however many rows it has,
and the token columns already have Arrow's list layout (values plus offsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tideflow.outputs import Logprob


@dataclass(slots=True)
class EngineOutput:
    """What one engine step produced, in scheduling order. Read-only to callers."""

    request_ids: list[str] = field(default_factory=list)  # row -> request id of the completion
    indexes: list[int] = field(default_factory=list)  # row -> completion index within its request (0..n-1)
    # rows + 1 entries: row i appended token_ids[token_offsets[i]:token_offsets[i + 1]]
    token_offsets: list[int] = field(default_factory=lambda: [0])
    token_ids: list[int] = field(default_factory=list)  # the tokens every row appended this step, concatenated
    # aligned with token_ids: {token_id: Logprob} (sampled + top-n), None where the completion did not ask
    logprobs: list[dict[int, Logprob] | None] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)  # row -> the completion ended this step
    finish_reasons: list[str | None] = field(default_factory=list)  # row -> "stop" | "length", None while it runs
    stop_reasons: list[int | str | None] = field(default_factory=list)  # row -> the stop string or token id that ended it
    finished_requests: list[str] = field(default_factory=list)  # requests whose last running completion ended this step
    num_scheduled_tokens: int = 0  # tokens computed this step (prompt chunks and decode rows)
    num_scheduled_seqs: int = 0  # sequences scheduled this step

    def add(self, request_id: str, index: int, token_id: int, logprobs: dict[int, Logprob] | None,
            finish_reason: str | None, stop_reason: int | str | None) -> None:
        """Append the row of a completion that sampled `token_id` (ended when `finish_reason` is set)."""
        self.request_ids.append(request_id)
        self.indexes.append(index)
        self.token_ids.append(token_id)
        self.logprobs.append(logprobs)
        self.token_offsets.append(len(self.token_ids))
        self.finished.append(finish_reason is not None)
        self.finish_reasons.append(finish_reason)
        self.stop_reasons.append(stop_reason)

    def __len__(self) -> int:
        return len(self.request_ids)

    def new_token_ids(self, row: int) -> list[int]:
        """The tokens row `row` appended this step."""
        return self.token_ids[self.token_offsets[row] : self.token_offsets[row + 1]]

    def new_logprobs(self, row: int) -> list[dict[int, Logprob]] | None:
        """The logprobs of row `row`'s new tokens, or None when its completion did not ask."""
        start, end = self.token_offsets[row], self.token_offsets[row + 1]
        if end == start or self.logprobs[start] is None:
            return None
        return self.logprobs[start:end]

    @property
    def decode_only(self) -> bool:
        """Every scheduled sequence computed one token: no prompt (prefill) rows in the step."""
        return self.num_scheduled_tokens == self.num_scheduled_seqs


@dataclass(slots=True)
class EngineStats:
    """How full an engine is now, and what its caches have done so far."""

    num_requests_running: int  # sequences holding KV blocks, scheduled every step
    num_requests_waiting: int  # sequences queued (new, or preempted for recompute)
    kv_cache_usage_perc: float  # fraction of KV blocks in use, 0 to 1
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache at admission
    prefix_cache_hits: int  # of those, tokens served from cached blocks
    num_preemptions: int  # sequences evicted to free blocks, so far
    images_encoded: int  # images this engine ran its own vision tower on
