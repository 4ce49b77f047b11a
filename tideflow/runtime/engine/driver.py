"""The one step loop: everything that steps an engine (the offline `LLM`, the batch loop, the
engine, prefill and decode roles, the benchmarks) steps it through an `EngineDriver`.

A step's bookkeeping is done here once: a request that finished leaves the engine at once,
and either waits with its output (`keep_outputs`, for callers that return whole outputs) or
has its id remembered in `done` (for roles, which drop a replayed input they already ran).
Until the next step the caller can still read the finished requests' sequences (`sequence`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from tideflow.outputs import RequestOutput
from tideflow.runtime.engine.api import EngineAPI
from tideflow.runtime.engine.core.outputs import EngineOutput
from tideflow.runtime.engine.core.sequence import Request, Sequence


class FinishedKeys(Protocol):
    """Where a role remembers what finished (`tideflow.runtime.recovery.snapshot_codec.KeyMemory`)."""

    def add(self, key) -> None:
        """Remember `key`."""


class EngineDriver:
    """Steps one engine and retires the requests each step finishes. Decided at construction:
    with `keep_outputs` a finished request's `RequestOutput` waits in `outputs` until taken;
    with `done` its id is added there. Not thread-safe, like the engine."""

    def __init__(self, engine: EngineAPI, *, keep_outputs: bool = False, done: FinishedKeys | None = None):
        self.engine = engine
        self.keep_outputs = keep_outputs
        self.done = done
        self.outputs: dict[str, RequestOutput] = {}  # request id -> output of a finished request, not yet taken
        self.retired: dict[str, Request] = {}  # request id -> request the last step finished (readable until the next)

    def step(self) -> EngineOutput:
        """One engine step, or an empty output when nothing runs or waits. Requests it
        finished are dropped from the engine (see the class docstring)."""
        engine = self.engine
        if self.retired:
            self.retired = {}
        if not engine.has_unfinished():
            return EngineOutput()
        out = engine.step()
        for request_id in out.finished_requests:
            request = self.retired[request_id] = engine.pop_finished(request_id)
            if self.keep_outputs:
                self.outputs[request_id] = request.output()
            if self.done is not None:
                self.done.add(request_id)
        return out

    def sequence(self, request_id: str, index: int) -> Sequence:
        """Completion `index` of a request the engine holds or the last step finished."""
        request = self.retired.get(request_id)
        return request.seqs[index] if request is not None else self.engine.sequence(request_id, index)

    def pop_output(self, request_id: str) -> RequestOutput:
        """The output of a finished request (`keep_outputs`), handed over once."""
        return self.outputs.pop(request_id)

    def run(self, request_ids: Iterable[str], progress: Callable[[int], object] | None = None) -> list[RequestOutput]:
        """Step until every one of `request_ids` has finished; their outputs in that order
        (needs `keep_outputs`). `progress(k)` hears of each k of them finishing in a step.
        RuntimeError when the engine runs dry with some of them unfinished."""
        if not self.keep_outputs:
            raise ValueError("EngineDriver.run returns outputs: build the driver with keep_outputs=True")
        request_ids = list(request_ids)
        pending = {rid for rid in request_ids if rid not in self.outputs}
        while pending:
            out = self.step()
            finished = [rid for rid in out.finished_requests if rid in pending]
            if finished:
                pending.difference_update(finished)
                if progress is not None:
                    progress(len(finished))
            if pending and not self.engine.has_unfinished():
                raise RuntimeError(f"engine stopped with {len(pending)} unfinished requests")
        return [self.outputs.pop(rid) for rid in request_ids]
