"""The graph's sink: assembles output rows into growing `RequestOutput`s, exactly once.

Rows are applied in `seq` order per completion and duplicates (a replayed row) are dropped,
so what a client sees never repeats or skips text.

A streaming client is not sent the whole output each time it grows (that costs time and
bytes quadratic in the output's length): `delta` hands it only what is new since its last
call, however many rows arrived meanwhile, and `OutputDelta.apply_to` rebuilds the
cumulative output on its side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow as pa

from tideflow.runtime.edges.rows import decode_logprobs
from tideflow.outputs import CompletionOutput, RequestOutput, SampleLogprobs


class RequestError(ValueError):
    """A request failed inside the graph (rejected input, or a stage died)."""


@dataclass(slots=True)
class CompletionDelta:
    """What one completion gained since the previous delta."""

    index: int
    token_ids: list[int]
    text: str
    logprobs: SampleLogprobs | None  # entries of the new positions, when logprobs were asked for
    cumulative_logprob: float | None  # the running total (not an increment), when logprobs were asked for
    finish_reason: str | None  # set once, in the delta where the completion finishes
    stop_reason: int | str | None


@dataclass(slots=True)
class OutputDelta:
    """What a request's output gained since the previous delta: only the completions that
    changed, and the prompt ids and metrics only when they are new, so a stream of deltas
    costs as much as the output itself."""

    request_id: str
    finished: bool
    completions: list[CompletionDelta]  # only the completions that changed
    prompt_token_ids: list[int] | None = None  # sent once, when first known
    metrics: dict[str, float] | None = None  # all of them, whenever one was added or changed

    def apply_to(self, out: RequestOutput) -> None:
        """Grow `out` (the output as of the previous delta) into the output as of this one."""
        if self.prompt_token_ids is not None:
            out.prompt_token_ids = list(self.prompt_token_ids)
        if self.metrics is not None:
            out.metrics.update(self.metrics)
        for d in self.completions:
            c = out.outputs[d.index]
            c.token_ids.extend(d.token_ids)
            c.text += d.text
            if d.logprobs is not None:
                if c.logprobs is None:
                    c.logprobs = []
                c.logprobs.extend(d.logprobs)
                c.cumulative_logprob = d.cumulative_logprob
            if d.finish_reason is not None:
                c.finish_reason, c.stop_reason = d.finish_reason, d.stop_reason
        out.finished = self.finished


def empty_output(request_id: str, prompt: str | None, n: int, metrics: dict[str, float] | None = None) -> RequestOutput:
    """A request's output before anything was generated: what deltas are applied to."""
    completions = [CompletionOutput(i, "", [], None, None, None) for i in range(n)]
    return RequestOutput(request_id, prompt, [], completions, finished=False, metrics=dict(metrics or {}))


def copy_output(out: RequestOutput) -> RequestOutput:
    """A copy that applying later deltas to `out` leaves unchanged. Linear in the output
    and cheap (lists are copied, their immutable items shared), unlike a deepcopy."""
    completions = [
        CompletionOutput(c.index, c.text, list(c.token_ids), c.cumulative_logprob,
                         None if c.logprobs is None else list(c.logprobs), c.finish_reason, c.stop_reason)
        for c in out.outputs
    ]
    return RequestOutput(out.request_id, out.prompt, list(out.prompt_token_ids), completions, out.finished,
                         dict(out.metrics))


@dataclass(slots=True)
class _Sent:
    """How much of one completion earlier deltas carried."""

    tokens: int = 0
    chars: int = 0
    logprobs: int = 0
    finished: bool = False


@dataclass(slots=True)
class _Pending:
    output: RequestOutput
    next_seq: list[int]  # completion index -> next row number expected
    sent: list[_Sent]  # completion index -> what deltas carried so far
    error: str | None = None
    dirty: bool = False  # changed since the last delta was taken
    prompt_sent: bool = False
    metrics_sent: dict[str, float] = field(default_factory=dict)


class OutputCollector:
    def __init__(self):
        self.pending: dict[str, _Pending] = {}

    def register(self, request_id: str, prompt: str | None, n: int) -> None:
        out = empty_output(request_id, prompt, n, {"arrival_time": time.time()})
        self.pending[request_id] = _Pending(out, [0] * n, [_Sent() for _ in range(n)])

    def add(self, batch: pa.RecordBatch) -> set[str]:
        """Apply output rows; returns the request ids that changed."""
        changed = set()
        now = time.time()  # wall clock: first_token_time / finished_time in metrics
        for row in batch.to_pylist():
            p = self.pending.get(row["request_id"])
            if p is None:
                continue  # unknown or already collected
            if row["finish_reason"] == "error":
                self._fail(p, row["error"] or "request failed")
                changed.add(row["request_id"])
                continue
            i = row["index"]
            if row["seq"] != p.next_seq[i]:
                continue  # duplicate (or, never expected, out of order)
            p.next_seq[i] += 1
            self._apply_row(p.output, row, now)
            p.dirty = True
            changed.add(row["request_id"])
        return changed

    @staticmethod
    def _apply_row(out: RequestOutput, row: dict, now: float) -> None:
        """Grow `out` by one row whose `seq` was just found to be the next expected."""
        c = out.outputs[row["index"]]
        if row["prompt_token_ids"] is not None and not out.prompt_token_ids:
            out.prompt_token_ids = row["prompt_token_ids"]
        c.token_ids.extend(row["new_token_ids"])
        if row["new_token_ids"]:
            out.metrics.setdefault("first_token_time", now)
        c.text += row["text"] or ""
        logprobs = decode_logprobs(row["logprobs"])
        if logprobs is not None:
            if c.logprobs is None:
                c.logprobs = []
            c.logprobs.extend(logprobs)
            c.cumulative_logprob = (c.cumulative_logprob or 0.0) + sum(
                e[t].logprob for e, t in zip(logprobs, row["new_token_ids"])
            )
        if row["finished"]:
            c.finish_reason = row["finish_reason"]
            c.stop_reason = row["stop_reason"] if row["stop_token_id"] is None else row["stop_token_id"]
            out.finished = all(x.finish_reason is not None for x in out.outputs)
            if out.finished:
                out.metrics["finished_time"] = now

    def fail(self, message: str, request_ids=None) -> set[str]:
        """Fail these (or all) unfinished requests, e.g. when a stage they pass through died."""
        ids = list(self.pending) if request_ids is None else [r for r in request_ids if r in self.pending]
        hit = set()
        for rid in ids:
            p = self.pending[rid]
            if not p.output.finished:
                self._fail(p, message)
                hit.add(rid)
        return hit

    def _fail(self, p: _Pending, message: str) -> None:
        p.error = message
        p.output.finished = True
        for c in p.output.outputs:
            if c.finish_reason is None:
                c.finish_reason = "error"
        p.dirty = True

    def finished(self, request_id: str) -> bool:
        return self.pending[request_id].output.finished

    def delta(self, request_id: str) -> OutputDelta:
        """What the request's output gained since the previous call (everything, on the first);
        raises RequestError when it failed."""
        p = self.pending[request_id]
        p.dirty = False
        if p.error is not None:
            raise RequestError(f"request {request_id}: {p.error}")
        out = p.output
        delta = OutputDelta(request_id, out.finished, [d for c, s in zip(out.outputs, p.sent) if (d := _take(c, s)) is not None])
        if out.prompt_token_ids and not p.prompt_sent:
            delta.prompt_token_ids, p.prompt_sent = out.prompt_token_ids, True
        if out.metrics != p.metrics_sent:
            delta.metrics = p.metrics_sent = dict(out.metrics)
        return delta

    def pop(self, request_id: str) -> RequestOutput:
        """Forget the request and return its whole output; raises RequestError when it failed."""
        p = self.pending.pop(request_id)
        if p.error is not None:
            raise RequestError(f"request {request_id}: {p.error}")
        return p.output

    def unfinished(self) -> list[str]:
        return [rid for rid, p in self.pending.items() if not p.output.finished]


def _take(c: CompletionOutput, sent: _Sent) -> CompletionDelta | None:
    """What `c` gained beyond `sent` (None when nothing), and advance `sent` past it."""
    finishing = c.finish_reason is not None and not sent.finished
    if len(c.token_ids) == sent.tokens and len(c.text) == sent.chars and not finishing:
        return None
    delta = CompletionDelta(
        c.index, c.token_ids[sent.tokens:], c.text[sent.chars:],
        None if c.logprobs is None else c.logprobs[sent.logprobs:], c.cumulative_logprob,
        c.finish_reason if finishing else None, c.stop_reason if finishing else None,
    )
    sent.tokens, sent.chars, sent.logprobs = len(c.token_ids), len(c.text), len(c.logprobs or ())
    sent.finished = c.finish_reason is not None
    return delta
