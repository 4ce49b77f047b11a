"""The colocated Engine role: prefill and decode in one engine, streaming tokens every step.

Migratable: when an engine replica dies, its requests come to the live ones as rows whose
`resume` column holds what the client already has of each completion; the request is rebuilt
from its prompt plus those tokens, recomputed, and streams on from the next row
(`tideflow.actors.migration`)."""

from __future__ import annotations

import time

import pyarrow as pa

from tideflow.actors.engine_role import EngineRole, admit
from tideflow.actors.migration import continue_from, held_requests, progress_of, seed_of
from tideflow.runtime.dataflow.role import Emission, StageContext
from tideflow.runtime.edges import schemas
from tideflow.runtime.edges.rows import TokenStream, concat
from tideflow.runtime.engine.core.sequence import Request, SequenceStatus
from tideflow.runtime.recovery.snapshot_codec import restore_stream, stream_state


class Engine(EngineRole):
    consumes = schemas.TOKENIZED
    produces = schemas.TOKENS
    routing = "prefix"
    migratable = True

    def __init__(self, context: StageContext):
        super().__init__(context)
        self.stream = TokenStream(context.replica)

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        for row in self._new_rows(batch):
            error = self._resume(row) if row.get("resume") else admit(self.engine, row, attachments)
            if error is not None:  # errors travel on as finished rows
                self._fail(row["request_id"], error)

    def _resume(self, row: dict) -> str | None:
        """Hold a request moved here from a replica that died: each completion rebuilt from the
        prompt plus what the client has of it (a finished one stays finished), then recomputed."""
        rid, params = row["request_id"], schemas.row_to_params(row["sampling"])
        try:
            prompt = self.engine.check_request(row["prompt_token_ids"], params)
            seqs = [self.engine.new_sequence(rid, i, list(prompt), params) for i in range(params.n)]
        except (ValueError, TypeError) as exc:
            return str(exc)
        for seq in seqs:
            seq.sampling_seed = seed_of(row, seq.index)
            progress = progress_of(row, seq.index)
            if progress is not None:
                continue_from(seq, progress, self.stream)
                if progress["finished"]:
                    seq.status = SequenceStatus.FINISHED
                    self.stream.forget(rid, seq.index)
        self.engine.restore_request(Request(rid, row["prompt"], list(prompt), params, seqs, time.time()))
        return None

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

    @classmethod
    def held(cls, snapshot: dict | None, logged: list[pa.RecordBatch]) -> list[dict]:
        return held_requests(snapshot, logged)

    def snapshot(self) -> dict:
        return {**super().snapshot(), "stream": stream_state(self.stream)}

    def restore(self, state: dict) -> None:
        super().restore(state)
        restore_stream(self.stream, state["stream"])
