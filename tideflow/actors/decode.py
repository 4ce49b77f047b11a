"""The Decode role: adopts prefilled sequences with their KV into its own paged cache and
runs continuous batching over them, streaming new tokens every step. A sequence that cannot
be adopted yet (no free blocks or slots) waits with its KV; one preempted later is recomputed
by this engine from its tokens.

A sequence that arrives without its KV (replayed from the input log after a crash) or comes
back from a snapshot is recomputed from its tokens (re-prefill) by default; with the stage
option `checkpoint_kv` a snapshot carries each sequence's K/V and restoring adopts it.

Migratable: when a decode replica dies, its completions come to the live ones as rows whose
`resume` column holds what the client already has; each is recomputed from the prompt plus
those tokens and streams on from the next row (`tideflow.actors.migration`)."""

from __future__ import annotations

from collections import deque

import pyarrow as pa

from tideflow.actors.engine_role import EngineRole
from tideflow.actors.migration import continue_from, held_completions, progress_of
from tideflow.actors.prefill import kv_key
from tideflow.runtime.dataflow.role import Emission, StageContext
from tideflow.runtime.edges import schemas
from tideflow.runtime.edges.rows import TokenStream, concat, decode_logprobs, decode_prompt_logprobs
from tideflow.runtime.engine.core.sequence import Sequence, SequenceStatus
from tideflow.runtime.recovery.snapshot_codec import kv_from_state, restore_stream, seq_from_state, seq_state, stream_state


class Decode(EngineRole):
    consumes = schemas.PREFILLED
    produces = schemas.TOKENS
    routing = "least_loaded"
    holds_requests = False  # single completions, adopted: `done` and `seqs` are keyed (request_id, index)
    migratable = True

    def __init__(self, context: StageContext):
        super().__init__(context)
        self.stream = TokenStream(context.replica)
        self.pending: deque[tuple[Sequence, tuple]] = deque()  # prefilled, waiting for blocks
        self.seqs: dict[tuple[str, int], Sequence] = {}  # (request_id, index) -> live sequence
        self.checkpoint_kv = context.config.stage.checkpoint_kv

    def _known(self, key: tuple[str, int]) -> bool:
        return key in self.seqs or key in self.done or any((s.request_id, s.index) == key for s, _ in self.pending)

    def _completion(self, request_id: str, index: int) -> Sequence:
        return self.seqs[(request_id, index)]

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        for row in batch.to_pylist():
            rid, index = row["request_id"], row["index"]
            if self._known((rid, index)):
                continue  # a replayed or retried input this replica already holds
            if row["error"]:
                self._fail(rid, row["error"])
                continue
            params = schemas.row_to_params(row["sampling"])
            seq = self.engine.new_sequence(rid, index, row["prompt_token_ids"], params)
            seq.token_ids.append(row["first_token_id"])
            seq.logprobs = decode_logprobs(row["first_logprobs"])
            seq.prompt_logprobs = decode_prompt_logprobs(row.get("prompt_logprobs"))
            if row.get("embedding") is not None:  # pooled by prefill: one normalized row
                seq.pooled_sum, seq.pooled_count = list(row["embedding"]), 1
            if seq.logprobs:
                seq.cumulative_logprob = seq.logprobs[0][row["first_token_id"]].logprob
            if row["finished"]:  # the first token ended it: pass it through
                seq.status = SequenceStatus.FINISHED
                seq.finish_reason, seq.stop_reason = row["finish_reason"], row["stop_token_id"]
                self.ready += self.stream.rows([seq])
                self.done.add((rid, index))
                continue
            seq.sampling_seed = row["sampling_seed"]
            progress = progress_of(row, index)
            if progress is not None:  # moved here from a replica that died: go on where the client is
                continue_from(seq, progress, self.stream)
                self._recompute(seq)
                continue
            kv = (attachments or {}).get(kv_key(rid, index))
            if kv is None:  # replayed without its KV: recompute it from the tokens
                self.ready += self.stream.rows([seq])  # the first token, sampled by prefill
                self._recompute(seq)
            else:
                self.pending.append((seq, kv))

    def _recompute(self, seq: Sequence) -> None:
        self.engine.recompute(seq)
        self.seqs[(seq.request_id, seq.index)] = seq

    def poll(self) -> list[Emission]:
        rows = self._take_ready()
        adopted = []
        while self.pending:
            seq, (k, v) = self.pending[0]
            if not self.engine.adopt(seq, k, v):
                break
            self.pending.popleft()
            self.seqs[(seq.request_id, seq.index)] = seq
            adopted.append(seq)
        rows += self.stream.rows(adopted)  # the first token, sampled by prefill
        out = self.driver.step()
        batch = concat(rows, self.stream.step_batch(out, self._completion), self.produces)
        for rid, index, finished in zip(out.request_ids, out.indexes, out.finished):
            if finished:
                self.seqs.pop((rid, index), None)
                self.done.add((rid, index))
        return [Emission(batch)] if batch is not None else []

    def has_work(self) -> bool:
        return super().has_work() or bool(self.pending)

    def load(self) -> int:
        return super().load() + len(self.pending)

    def abort(self, targets: list[tuple[str, int | None]]) -> None:
        def hit(seq: Sequence) -> bool:
            return any(seq.request_id == rid and (index is None or seq.index == index) for rid, index in targets)

        self.pending = deque(item for item in self.pending if not hit(item[0]))
        victims = [s for s in self.seqs.values() if hit(s)]
        self.engine.release(victims)
        for seq in victims:
            del self.seqs[(seq.request_id, seq.index)]
            self.done.add((seq.request_id, seq.index))
        for rid, index in targets:
            self.stream.forget(rid, index)

    @classmethod
    def held(cls, snapshot: dict | None, logged: list[pa.RecordBatch]) -> list[dict]:
        return held_completions(snapshot, logged)

    def stats(self) -> dict:
        return {**super().stats(), "num_pending_adoption": len(self.pending)}

    def snapshot(self) -> dict:
        """Live sequences by their tokens (plus K/V with `checkpoint_kv`); those still waiting
        for adoption too, so that nothing prefill handed over is lost."""
        live = [
            seq_state(s, self.engine.read_kv(s) if self.checkpoint_kv and s.num_computed_tokens else None)
            for s in self.seqs.values()
        ]
        waiting = [seq_state(s, kv if self.checkpoint_kv else None) for s, kv in self.pending]
        return {"seqs": live + waiting, "stream": stream_state(self.stream), **super().snapshot()}

    def restore(self, state: dict) -> None:
        super().restore(state)
        restore_stream(self.stream, state["stream"])
        for s in state["seqs"]:
            seq, kv = seq_from_state(s), kv_from_state(s)
            key = (seq.request_id, seq.index)
            if key not in self.stream.sent and kv is None:  # never adopted: its first token was not sent
                self.ready += self.stream.rows([seq])
            if kv is not None and key not in self.stream.sent:
                self.pending.append((seq, kv))
            elif kv is not None:
                self._adopt_restored(seq, kv)
            else:
                self._recompute(seq)

    def _adopt_restored(self, seq: Sequence, kv: tuple) -> None:
        """A live sequence restored with its K/V: adopted now, or recomputed if it does not fit."""
        if self.engine.adopt(seq, *kv):
            self.seqs[(seq.request_id, seq.index)] = seq
        else:
            self._recompute(seq)
