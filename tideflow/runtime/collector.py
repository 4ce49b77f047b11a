"""The graph's sink: assembles output rows into growing `RequestOutput`s, exactly once.

Rows are applied in `seq` order per completion and duplicates (a replayed row) are dropped,
so what a client sees never repeats or skips text.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import pyarrow as pa

from tideflow.actors.rows import decode_logprobs
from tideflow.outputs import CompletionOutput, RequestOutput


class RequestError(ValueError):
    """A request failed inside the graph (rejected input, or a stage died)."""


@dataclass(slots=True)
class _Pending:
    output: RequestOutput
    next_seq: list[int]  # completion index -> next row number expected
    error: str | None = None
    dirty: bool = field(default=False)  # changed since the last snapshot was taken


class OutputCollector:
    def __init__(self):
        self.pending: dict[str, _Pending] = {}

    def register(self, request_id: str, prompt: str | None, n: int) -> None:
        completions = [CompletionOutput(i, "", [], None, None, None) for i in range(n)]
        out = RequestOutput(request_id, prompt, [], completions, finished=False, metrics={"arrival_time": time.time()})
        self.pending[request_id] = _Pending(out, [0] * n)

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
            c = p.output.outputs[i]
            if row["prompt_token_ids"] is not None and not p.output.prompt_token_ids:
                p.output.prompt_token_ids = row["prompt_token_ids"]
            c.token_ids.extend(row["new_token_ids"])
            if row["new_token_ids"]:
                p.output.metrics.setdefault("first_token_time", now)
            c.text += row["text"] or ""
            logprobs = decode_logprobs(row["logprobs"])
            if logprobs is not None:
                c.logprobs = (c.logprobs or []) + logprobs
                c.cumulative_logprob = (c.cumulative_logprob or 0.0) + sum(
                    e[t].logprob for e, t in zip(logprobs, row["new_token_ids"])
                )
            if row["finished"]:
                c.finish_reason = row["finish_reason"]
                c.stop_reason = row["stop_reason"] if row["stop_token_id"] is None else row["stop_token_id"]
                p.output.finished = all(x.finish_reason is not None for x in p.output.outputs)
                if p.output.finished:
                    p.output.metrics["finished_time"] = now
            p.dirty = True
            changed.add(row["request_id"])
        return changed

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

    def snapshot(self, request_id: str) -> RequestOutput:
        """A copy of the request's output so far; raises RequestError when it failed."""
        p = self.pending[request_id]
        p.dirty = False
        if p.error is not None:
            raise RequestError(f"request {request_id}: {p.error}")
        return copy.deepcopy(p.output)

    def pop(self, request_id: str) -> RequestOutput:
        try:
            return self.snapshot(request_id)
        finally:
            del self.pending[request_id]

    def unfinished(self) -> list[str]:
        return [rid for rid, p in self.pending.items() if not p.output.finished]

