"""The colocated Engine role: prefill and decode in one engine, streaming tokens every step."""

from __future__ import annotations

import pyarrow as pa

from tideflow.actors.engine_role import EngineRole, admit
from tideflow.runtime.dataflow.role import Emission, StageContext
from tideflow.runtime.edges import schemas
from tideflow.runtime.edges.rows import TokenStream, concat
from tideflow.runtime.recovery.snapshot_codec import restore_stream, stream_state


class Engine(EngineRole):
    consumes = schemas.TOKENIZED
    produces = schemas.TOKENS
    routing = "prefix"

    def __init__(self, context: StageContext):
        super().__init__(context)
        self.stream = TokenStream(context.replica)

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        for row in self._new_rows(batch):
            error = admit(self.engine, row, attachments)
            if error is not None:  # errors travel on as finished rows
                self._fail(row["request_id"], error)

    def poll(self) -> list[Emission]:
        batch = concat(self._take_ready(), self.stream.step_batch(self.driver.step(), self.driver.sequence),
                       self.produces)
        return [Emission(batch)] if batch is not None else []

    def abort(self, targets: list[tuple[str, int | None]]) -> None:
        for request_id, index in targets:
            if not self.engine.abort_request(request_id, index):
                continue
            self.stream.forget(request_id, index)
            if not self.engine.has_request(request_id):  # nothing of it runs any more
                self.done.add(request_id)

    def snapshot(self) -> dict:
        return {**super().snapshot(), "stream": stream_state(self.stream)}

    def restore(self, state: dict) -> None:
        super().restore(state)
        restore_stream(self.stream, state["stream"])
