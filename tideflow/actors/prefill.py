"""The Prefill role: computes prompts (chunked, with prefix caching), samples each completion's
first token, and hands the sequence with its KV to decode. The KV rides beside the batch as an
attachment (a Ray object reference when deployed), never in an Arrow column."""

from __future__ import annotations

import pyarrow as pa

from tideflow.actors.engine_role import EngineRole, admit
from tideflow.runtime.dataflow.role import Emission
from tideflow.runtime.edges import schemas
from tideflow.runtime.edges.rows import encode_logprobs, encode_prompt_logprobs, to_batch


def kv_key(request_id: str, index: int) -> str:
    return f"{request_id}/{index}"


class Prefill(EngineRole):
    consumes = schemas.TOKENIZED
    produces = schemas.PREFILLED
    routing = "prefix"

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        for row in self._new_rows(batch):
            error = admit(self.engine, row) if not row.get("images") else (
                "multi_modal_data: a prefill/decode graph does not carry images (decode recomputes "
                "prompts without them); use graphs.multimodal or colocated"
            )
            if error is not None:  # errors travel on as finished rows
                self._fail(row["request_id"], error)

    def poll(self) -> list[Emission]:
        rows = self._take_ready()
        attachments = {}
        handoff = []
        out = self.driver.step()
        for i, (rid, index) in enumerate(zip(out.request_ids, out.indexes)):  # each sampled its first token
            seq = self.driver.sequence(rid, index)
            stop = out.stop_reasons[i]
            row = {
                "request_id": rid,
                "index": index,
                "prompt_token_ids": seq.token_ids[: seq.num_prompt_tokens],
                "sampling": schemas.params_to_row(seq.params),
                "arrival_time": seq.arrival_time,
                "first_token_id": out.token_ids[out.token_offsets[i]],
                "first_logprobs": encode_logprobs(out.new_logprobs(i)),
                "prompt_logprobs": encode_prompt_logprobs(seq),
                "embedding": seq.embedding() if seq.wants_pooling else None,
                "finished": out.finished[i],
                "finish_reason": out.finish_reasons[i],
                "stop_token_id": stop if isinstance(stop, int) else None,
            }
            if not out.finished[i]:
                attachments[kv_key(rid, index)] = self.engine.read_kv(seq)
                row["sampling_seed"] = seq.sampling_seed
                handoff.append(seq)
            rows.append(row)
        for rid in self.engine.release(handoff):  # requests now wholly handed off
            self.done.add(rid)
        if not rows:
            return []
        return [Emission(to_batch(rows, self.produces), attachments or None)]

    def abort(self, targets: list[tuple[str, int | None]]) -> None:
        for request_id, _ in targets:
            self.engine.abort_request(request_id)
            self.done.add(request_id)
