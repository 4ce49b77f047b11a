"""The Decode role: adopts prefilled sequences with their KV into its own paged cache and
runs continuous batching over them, streaming new tokens every step. A sequence that cannot
be adopted yet (no free blocks or slots) waits with its KV; one preempted later is recomputed
by this engine from its tokens."""

from __future__ import annotations

from collections import deque

import pyarrow as pa

from tideflow.actors.base import Emission, StageContext, StageRole
from tideflow.actors.engine import build_engine, capacity, engine_stats
from tideflow.actors.prefill import kv_key
from tideflow.actors.rows import TokenStream, decode_logprobs, error_row, to_batch
from tideflow.graphs import schemas
from tideflow.runtime.sequence import Sequence, SequenceStatus


class Decode(StageRole):
    consumes = schemas.PREFILLED
    produces = schemas.TOKENS
    needs_model = True
    routing = "least_loaded"

    def __init__(self, context: StageContext):
        super().__init__(context)
        self.core = build_engine(context.options)
        self.capacity = capacity(context.options)
        self.stream = TokenStream(context.replica)
        self.ready: list[dict] = []  # rows to send before the next step
        self.pending: deque[tuple[Sequence, tuple]] = deque()  # prefilled, waiting for blocks
        self.seqs: dict[tuple[str, int], Sequence] = {}  # (request_id, index) -> live sequence

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        replica = self.context.replica
        for row in batch.to_pylist():
            rid, index = row["request_id"], row["index"]
            if row["error"]:
                self.ready.append(error_row(rid, row["error"], replica))
                continue
            params = schemas.row_to_params(row["sampling"])
            seq = self.core.new_sequence(rid, index, row["prompt_token_ids"], params)
            seq.token_ids.append(row["first_token_id"])
            seq.logprobs = decode_logprobs(row["first_logprobs"])
            if seq.logprobs:
                seq.cumulative_logprob = seq.logprobs[0][row["first_token_id"]].logprob
            if row["finished"]:  # the first token ended it: pass it through
                seq.status = SequenceStatus.FINISHED
                seq.finish_reason, seq.stop_reason = row["finish_reason"], row["stop_token_id"]
                self.ready += self.stream.rows([seq])
                continue
            seq.sampling_seed = row["sampling_seed"]
            self.pending.append((seq, attachments[kv_key(rid, index)]))

    def poll(self) -> list[Emission]:
        rows, self.ready = self.ready, []
        adopted = []
        while self.pending:
            seq, (k, v) = self.pending[0]
            if not self.core.adopt(seq, k, v):
                break
            self.pending.popleft()
            self.seqs[(seq.request_id, seq.index)] = seq
            adopted.append(seq)
        rows += self.stream.rows(adopted)  # the first token, sampled by prefill
        if self.core.has_unfinished():
            produced = self.core.step()
            rows += self.stream.rows(produced)
            for seq in produced:
                if seq.finished:
                    self.seqs.pop((seq.request_id, seq.index), None)
        return [Emission(to_batch(rows, self.produces))] if rows else []

    def has_work(self) -> bool:
        return bool(self.ready) or self.core.has_unfinished() or bool(self.pending)

    def load(self) -> int:
        return self.core.scheduler.num_unfinished + len(self.pending)

    def accepting(self) -> bool:
        return self.load() < self.capacity

    def abort(self, targets: list[tuple[str, int | None]]) -> None:
        def hit(seq: Sequence) -> bool:
            return any(seq.request_id == rid and (index is None or seq.index == index) for rid, index in targets)

        self.pending = deque(item for item in self.pending if not hit(item[0]))
        victims = [s for s in self.seqs.values() if hit(s)]
        self.core.scheduler.abort(victims)
        for seq in victims:
            del self.seqs[(seq.request_id, seq.index)]
        for rid, index in targets:
            self.stream.forget(rid, index)

    def stats(self) -> dict:
        return {**engine_stats(self.core), "num_pending_adoption": len(self.pending)}

