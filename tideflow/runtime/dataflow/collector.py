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

from tideflow.runtime.edges.rows import decode_logprobs, decode_prompt_logprobs, encode_logprobs
from tideflow.outputs import CompletionOutput, PromptLogprobs, RequestOutput, SampleLogprobs


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
    prompt_logprobs: PromptLogprobs | None = None  # sent once, when known (only when asked for)
    embedding: list[float] | None = None  # sent once, when known (only when pooling was asked for)

    def apply_to(self, out: RequestOutput) -> None:
        """Grow `out` (the output as of the previous delta) into the output as of this one."""
        if self.prompt_token_ids is not None:
            out.prompt_token_ids = list(self.prompt_token_ids)
        if self.prompt_logprobs is not None:
            out.prompt_logprobs = list(self.prompt_logprobs)
        if self.embedding is not None:
            out.embedding = list(self.embedding)
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
                         dict(out.metrics), None if out.prompt_logprobs is None else list(out.prompt_logprobs),
                         out.embedding)


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
    prompt_logprobs_sent: bool = False
    embedding_sent: bool = False
    metrics_sent: dict[str, float] = field(default_factory=dict)


class OutputCollector:
    def __init__(self):
        self.pending: dict[str, _Pending] = {}

    def register(self, request_id: str, prompt: str | None, n: int) -> None:
        out = empty_output(request_id, prompt, n, {"arrival_time": time.time()})
        self.pending[request_id] = _Pending(out, [0] * n, [_Sent() for _ in range(n)])

    def add(self, batch: pa.RecordBatch) -> set[str]:
        """Apply output rows; returns the request ids that changed. Reads the batch by column:
        the token ids come out of their Arrow buffers as one numpy array."""
        changed = set()
        now = time.time()  # wall clock, as every request metric: first_token_time / finished_time
        cols = _Columns(batch)
        for i, rid in enumerate(cols.request_id):
            p = self.pending.get(rid)
            if p is None:
                continue  # unknown or already collected
            if cols.finish_reason[i] == "error":
                self._fail(p, cols.error[i] or "request failed")
                changed.add(rid)
                continue
            index = int(cols.index[i])
            if cols.seq[i] != p.next_seq[index]:
                continue  # duplicate (or, never expected, out of order)
            p.next_seq[index] += 1
            self._apply_row(p.output, cols, i, index, now)
            p.dirty = True
            changed.add(rid)
        return changed

    @staticmethod
    def _apply_row(out: RequestOutput, cols: _Columns, i: int, index: int, now: float) -> None:
        """Grow `out` by row `i`, whose `seq` was just found to be the next expected."""
        c = out.outputs[index]
        if not out.prompt_token_ids and cols.has_prompt(i):
            out.prompt_token_ids = cols.prompt(i)
        if out.prompt_logprobs is None and cols.prompt_logprobs is not None and cols.prompt_logprobs[i].is_valid:
            out.prompt_logprobs = decode_prompt_logprobs(cols.prompt_logprobs[i].as_py())
        if out.embedding is None and cols.embedding is not None and cols.embedding[i].is_valid:
            out.embedding = cols.embedding[i].as_py()
        new = cols.tokens(i)
        c.token_ids.extend(new)
        if new:
            out.metrics.setdefault("first_token_time", now)
        c.text += cols.text[i] or ""
        logprobs = decode_logprobs(cols.logprobs[i].as_py()) if cols.logprobs is not None else None
        if logprobs is not None:
            if c.logprobs is None:
                c.logprobs = []
            c.logprobs.extend(logprobs)
            c.cumulative_logprob = (c.cumulative_logprob or 0.0) + sum(e[t].logprob for e, t in zip(logprobs, new))
        if cols.finished[i]:
            c.finish_reason = cols.finish_reason[i]
            stop_token = cols.stop_token_id[i]
            c.stop_reason = cols.stop_reason[i] if stop_token is None else stop_token
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

    def progress(self, request_id: str) -> list[dict] | None:
        """How far the request got, one `schemas.PROGRESS` dict per completion: rows taken, their
        output tokens and logprobs, whether it finished. A request whose replica died is
        rebuilt from this (request migration). None when the request is unknown (cancelled,
        collected) or finished (failed included): there is nothing to continue."""
        p = self.pending.get(request_id)
        if p is None or p.output.finished:
            return None
        return [
            {"index": c.index, "rows": p.next_seq[c.index], "token_ids": list(c.token_ids),
             "logprobs": encode_logprobs(c.logprobs), "finished": c.finish_reason is not None}
            for c in p.output.outputs
        ]

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
        if out.prompt_logprobs is not None and not p.prompt_logprobs_sent:
            delta.prompt_logprobs, p.prompt_logprobs_sent = out.prompt_logprobs, True
        if out.embedding is not None and not p.embedding_sent:
            delta.embedding, p.embedding_sent = out.embedding, True
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


class _Columns:
    """The OUTPUTS columns of one batch as the collector reads them: small columns as Python
    lists, token id lists as one numpy array of values with row offsets."""

    def __init__(self, batch: pa.RecordBatch):
        self.request_id = batch.column("request_id").to_pylist()
        self.index = batch.column("index").to_numpy(zero_copy_only=False)
        self.seq = batch.column("seq").to_numpy(zero_copy_only=False)
        self.text = batch.column("text").to_pylist()
        self.finished = batch.column("finished").to_numpy(zero_copy_only=False)
        self.finish_reason = batch.column("finish_reason").to_pylist()
        self.stop_reason = batch.column("stop_reason").to_pylist()
        self.stop_token_id = batch.column("stop_token_id").to_pylist()
        self.error = batch.column("error").to_pylist()
        logprobs = batch.column("logprobs")
        self.logprobs = None if logprobs.null_count == len(logprobs) else logprobs
        prompt_logprobs = batch.column("prompt_logprobs")
        self.prompt_logprobs = None if prompt_logprobs.null_count == len(prompt_logprobs) else prompt_logprobs
        embedding = batch.column("embedding")
        self.embedding = None if embedding.null_count == len(embedding) else embedding
        tokens = batch.column("new_token_ids")
        self._offsets, self._values = tokens.offsets.to_numpy(), tokens.values.to_numpy(zero_copy_only=False)
        self._prompts = batch.column("prompt_token_ids")

    def tokens(self, i: int) -> list[int]:
        return self._values[self._offsets[i] : self._offsets[i + 1]].tolist()

    def has_prompt(self, i: int) -> bool:
        return self._prompts[i].is_valid

    def prompt(self, i: int) -> list[int]:
        return self._prompts[i].as_py()
