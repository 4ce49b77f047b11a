"""One engine shared by the concurrent calls of a batch actor.

Ray Data can run several `map_batches` calls in one actor at once (threads). Each call hands
its rows to the engine and waits; one background thread steps the engine while anything is
unfinished. So the engine batches continuously across batches: when one batch is down to its
longest rows, the next one's rows already fill the running set, instead of the engine idling
through each batch's tail.

The engine is not thread-safe, so only the loop thread touches it: callers put their rows in
an inbox, which the loop drains between steps (so a caller never waits on a lock the loop
keeps re-taking), and the loop hands each call its outputs when its last row finishes.
"""

from __future__ import annotations

import itertools
import queue
import threading

from tideflow.outputs import RequestOutput
from tideflow.sampling_params import SamplingParams


class _Call:
    """One caller's rows: their outputs fill in as they finish; `done` fires with the last."""

    __slots__ = ("prompts", "params", "outputs", "left", "error", "done")

    def __init__(self, prompts: list[dict], params: list[SamplingParams]):
        self.prompts, self.params = prompts, params
        self.outputs: list[RequestOutput | None] = [None] * len(prompts)  # in the order of the prompts
        self.left = len(prompts)  # rows not finished yet
        self.error: BaseException | None = None
        self.done = threading.Event()


class EngineLoop:
    def __init__(self, engine):
        from tideflow.runtime.engine.driver import EngineDriver

        self.engine = engine
        self._driver = EngineDriver(engine, keep_outputs=True)
        self._inbox: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._ids = itertools.count()
        self._rows: dict[str, tuple[_Call, int]] = {}  # request_id -> (its call, index in the call)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tideflow-batch-engine", daemon=True)
        self._thread.start()

    def generate(self, prompts: list[dict], params: list[SamplingParams]) -> list[RequestOutput]:
        """Run `{"prompt", "prompt_token_ids"}` prompts (already checked) alongside the other
        calls; outputs in order. A prompt the engine rejects raises its ValueError."""
        if not prompts:
            return []
        call = _Call(prompts, params)
        self._inbox.put(call)
        while not call.done.wait(1.0):
            if self._error is not None and not call.done.is_set():  # the loop died before taking this call
                raise RuntimeError(f"the batch engine loop failed: {self._error!r}") from self._error
        if call.error is not None:
            raise call.error
        return call.outputs

    def _admit(self, call: _Call) -> None:
        added = []
        try:
            for index, (prompt, sp) in enumerate(zip(call.prompts, call.params)):
                rid = f"batch-{next(self._ids)}"
                self.engine.add_request(rid, prompt["prompt_token_ids"], sp, prompt=prompt.get("prompt"))
                added.append(rid)
                self._rows[rid] = (call, index)
        except ValueError as exc:  # nothing of this call runs
            for rid in added:
                self.engine.abort_request(rid)
                del self._rows[rid]
            call.error = exc
            call.done.set()

    def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                if not engine.has_unfinished():
                    self._admit(self._inbox.get())  # idle: block until a call arrives
                while True:
                    try:
                        self._admit(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                for rid in self._driver.step().finished_requests:  # every request here is a row of a call
                    call, index = self._rows.pop(rid)
                    call.outputs[index] = self._driver.pop_output(rid)
                    call.left -= 1
                    if not call.left:
                        call.done.set()
        except BaseException as exc:  # noqa: BLE001 (handed to every waiting call)
            self._error = exc
            for call, _ in list(self._rows.values()):
                call.error = exc
                call.done.set()
            while True:
                try:
                    call = self._inbox.get_nowait()
                except queue.Empty:
                    break
                call.error = exc
                call.done.set()
