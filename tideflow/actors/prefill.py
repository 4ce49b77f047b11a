"""The Prefill role: computes prompts (chunked, with prefix caching), samples each completion's
first token, and hands the sequence with its KV to decode. The KV rides beside the batch as an
attachment (a Ray object reference when deployed), never in an Arrow column."""

from __future__ import annotations

import pyarrow as pa

from tideflow.runtime.dataflow.role import Emission, StageContext, StageRole
from tideflow.actors.engine import admit, build_engine, capacity, engine_stats
from tideflow.runtime.edges.rows import encode_logprobs, to_batch
from tideflow.runtime.recovery.snapshot_codec import KeyMemory, generator_state, requests_state, restore_generator, restore_requests
from tideflow.runtime.edges import schemas


def kv_key(request_id: str, index: int) -> str:
    return f"{request_id}/{index}"


class Prefill(StageRole):
    consumes = schemas.TOKENIZED
    produces = schemas.PREFILLED
    needs_model = True
    routing = "prefix"

    def __init__(self, context: StageContext):
        super().__init__(context)
        self.core = build_engine(context.options)
        self.capacity = capacity(context.options)
        self.ready: list[dict] = []
        self.done = KeyMemory()  # request ids handed off (or failed) here: replayed rows are dropped

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        for row in batch.to_pylist():
            if row["request_id"] in self.core.requests or row["request_id"] in self.done:
                continue  # a replayed or retried input this replica already holds
            err = admit(self.core, row, self.context.replica) if not row.get("images") else {
                "error": "multi_modal_data: a prefill/decode graph does not carry images (decode recomputes "
                "prompts without them); use graphs.builtin.multimodal or colocated"
            }
            if err is not None:  # errors travel on as finished rows
                self.ready.append(
                    {"request_id": row["request_id"], "index": 0, "prompt_token_ids": [], "finished": True,
                     "finish_reason": "error", "error": err["error"]}
                )

    def poll(self) -> list[Emission]:
        rows, self.ready = self.ready, []
        attachments = {}
        if self.core.has_unfinished():
            handoff = []
            produced = self.core.step()
            for seq in produced:  # every produced sequence just sampled its first token
                req = self.core.requests[seq.request_id]
                row = {
                    "request_id": seq.request_id,
                    "index": seq.index,
                    "prompt_token_ids": seq.token_ids[: seq.num_prompt_tokens],
                    "sampling": schemas.params_to_row(seq.params),
                    "arrival_time": req.arrival_time,
                    "first_token_id": seq.last_token_id,
                    "first_logprobs": encode_logprobs(seq.logprobs),
                    "finished": seq.finished,
                    "finish_reason": seq.finish_reason,
                    "stop_token_id": seq.stop_reason if isinstance(seq.stop_reason, int) else None,
                }
                if not seq.finished:
                    attachments[kv_key(seq.request_id, seq.index)] = self.core.runner.read_kv(
                        seq.block_table, seq.num_computed_tokens
                    )
                    row["sampling_seed"] = seq.sampling_seed
                    handoff.append(seq)
                rows.append(row)
            self.core.release(handoff)
            for seq in produced:
                req = self.core.requests.get(seq.request_id)
                if req is not None and req.finished:
                    del self.core.requests[seq.request_id]
                    self.done.add(seq.request_id)
        if not rows:
            return []
        return [Emission(to_batch(rows, self.produces), attachments or None)]

    def has_work(self) -> bool:
        return bool(self.ready) or self.core.has_unfinished()

    def load(self) -> int:
        return self.core.scheduler.num_unfinished

    def accepting(self) -> bool:
        return self.load() < self.capacity

    def abort(self, targets: list[tuple[str, int | None]]) -> None:
        for request_id, _ in targets:
            self.core.abort_request(request_id)
            self.done.add(request_id)

    def stats(self) -> dict:
        return engine_stats(self.core)

    def snapshot(self) -> dict:
        return {
            "requests": requests_state(self.core),
            "ready": list(self.ready),
            "done": self.done.state(),
            "generator": generator_state(self.core),
        }

    def restore(self, state: dict) -> None:
        restore_requests(self.core, state["requests"])
        self.ready = list(state["ready"])
        self.done.restore(state["done"])
        restore_generator(self.core, state["generator"])
