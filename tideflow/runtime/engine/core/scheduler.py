"""Continuous batching under a per-step token budget.

Each step schedules the running sequences first (a decode token each, or the next chunk of a
prompt), then admits waiting ones while the budget, the sequence limit and the KV pool allow.
Long prompts are split into chunks when chunked prefill is on. When a running sequence needs
a block and none is free, the most recently admitted running sequence is preempted: its
blocks are freed and it goes back to the front of the queue to be recomputed from its tokens.

Torch-free: the scheduler sees token ids and counts, never tensors.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from tideflow.config import SchedulerConfig
from tideflow.runtime.engine.core.scheduled_batch import ScheduledBatch
from tideflow.runtime.engine.core.block_manager import BlockManager
from tideflow.runtime.engine.core.outputs import EngineOutput
from tideflow.runtime.engine.core.sequence import Sequence, SequenceStatus


class TextStopChecker(Protocol):
    """Turns a sequence's tokens into text, mutating `seq.output_text` and its offsets."""

    def update(self, seq: Sequence) -> str | None:
        """Add the newest token's text; return the stop string that now ends it, if any."""

    def flush(self, seq: Sequence) -> None:
        """The sequence ended otherwise: add any text still held back."""


class GrammarChecker(Protocol):
    """Structured outputs: advances a constrained sequence's grammar over its newest token."""

    def advance(self, seq: Sequence) -> str | None:
        """Consume the newest token; the finish reason when the grammar ends the sequence now
        ("stop": nothing but EOS may follow; "abort": the grammar failed), else None."""


class SampledTokens(Protocol):
    """What the runner returns: one sampled token (and optional logprobs) per sampling row."""

    token_ids: list[int]
    logprobs: list
    prompt_logprobs: dict  # batch row -> the prompt logprob entries it added
    pooled: dict  # batch row -> (sum of its pooled hidden states, how many)


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        blocks: BlockManager,
        *,
        eos_token_ids: frozenset[int] = frozenset(),
        max_model_len: int,
        stop_checker: TextStopChecker | None = None,
        grammar: GrammarChecker | None = None,
        clock=None,
    ):
        self.config = config
        self.blocks = blocks
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = max_model_len
        self.stop_checker = stop_checker
        self.grammar = grammar
        self.clock = clock
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # -- queue management ---------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def adopt(self, seq: Sequence) -> bool:
        """Run a sequence whose first `seq.num_computed_tokens` tokens already have K/V in the
        blocks of its table (a handoff from prefill). False when the sequence limit is reached."""
        if len(self.running) >= self.config.max_num_seqs:
            return False
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        return True

    def abort(self, seqs: list[Sequence]) -> None:
        """Stop these sequences now and free their blocks."""
        for seq in seqs:
            if seq.finished:
                continue
            if seq.status is SequenceStatus.RUNNING:
                self.running.remove(seq)
            else:
                self.waiting.remove(seq)
            self._finish(seq, "abort")

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    # -- step ---------------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        chunked = self.config.enable_chunked_prefill

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.blocks.allocate(seq, num_new):
                victim = self.running.pop()
                self._preempt(victim, batch)
                if victim is seq:
                    break
            else:
                batch.add(seq, num_new)
                budget -= num_new
                i += 1

        while self.waiting and budget > 0 and not batch.preempted:
            if len(self.running) >= self.config.max_num_seqs:
                break
            seq = self.waiting[0]
            # a prefix hit computes no rows for the cached tokens, and their prompt logprobs need them
            cached = [] if seq.wants_prompt_logprobs else self.blocks.match_prefix(seq)
            num_cached = len(cached) * self.blocks.block_size
            num_new = seq.num_tokens - num_cached
            if num_new > budget:
                if not chunked:
                    break
                num_new = budget
            if not self.blocks.allocate(seq, num_new, cached):
                break
            self.waiting.popleft()
            self.blocks.record_admission(seq, num_cached)
            seq.num_computed_tokens = num_cached
            seq.num_cached_tokens = num_cached
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.add(seq, num_new)
            budget -= num_new
        return batch

    def update(self, batch: ScheduledBatch, output: SampledTokens) -> EngineOutput:
        """Advance every scheduled sequence by its computed tokens, append the sampled tokens,
        apply the stop conditions, and return what the step produced: a row per sequence that
        sampled a token, and the requests that finished."""
        row = 0
        out = EngineOutput(num_scheduled_tokens=batch.num_tokens, num_scheduled_seqs=len(batch))
        prompt_logprobs = getattr(output, "prompt_logprobs", None) or {}  # stand-in runners return none
        pooled = getattr(output, "pooled", None) or {}
        for i, (seq, num_new, sampled) in enumerate(zip(batch.seqs, batch.num_new_tokens, batch.sample)):
            if i in prompt_logprobs:
                if seq.prompt_logprobs is None:
                    seq.prompt_logprobs = [None]
                seq.prompt_logprobs.extend(prompt_logprobs[i])
            if i in pooled:
                part, count = pooled[i]
                seq.pooled_sum = part if seq.pooled_sum is None else [a + b for a, b in zip(seq.pooled_sum, part)]
                seq.pooled_count += count
            seq.num_computed_tokens += num_new
            self.blocks.publish_full_blocks(seq)
            self.blocks.release_outside_window(seq)
            if not sampled:
                continue
            token_id, logprobs = output.token_ids[row], output.logprobs[row] if output.logprobs else None
            self._append(seq, token_id, logprobs)
            row += 1
            reason = self._stop_reason(seq)
            if reason is not None:
                if self.stop_checker is not None and not isinstance(seq.stop_reason, str):
                    self.stop_checker.flush(seq)  # a stop string already cut the text
                self.running.remove(seq)
                self._finish(seq, reason)
            out.add(seq.request_id, seq.index, token_id, logprobs, seq.finish_reason, seq.stop_reason)
            if reason is not None and seq.request is not None and seq.request.finished:
                out.finished_requests.append(seq.request_id)
        return out

    # -- helpers ------------------------------------------------------------------------------
    def _append(self, seq: Sequence, token_id: int, logprobs) -> None:
        seq.token_ids.append(token_id)
        if seq.first_token_time is None and self.clock is not None:
            seq.first_token_time = self.clock()
        if logprobs is not None:
            if seq.logprobs is None:
                seq.logprobs = []
            seq.logprobs.append(logprobs)
            seq.cumulative_logprob += logprobs[token_id].logprob

    def _stop_reason(self, seq: Sequence) -> str | None:
        token = seq.last_token_id
        params = seq.params
        if self.stop_checker is not None:
            stop_str = self.stop_checker.update(seq)
            if stop_str is not None:
                seq.stop_reason = stop_str
                return "stop"
        if seq.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token in self.eos_token_ids:
                return "stop"
            if token in params.stop_token_ids:
                seq.stop_reason = token
                return "stop"
        if params.structured_outputs is not None and self.grammar is not None:
            reason = self.grammar.advance(seq)  # a complete output stops even before min_tokens
            if reason is not None:
                return reason
        if seq.num_output_tokens >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        self.blocks.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)

    def _finish(self, seq: Sequence, reason: str) -> None:
        if self.clock is not None:
            seq.finished_time = self.clock()
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
