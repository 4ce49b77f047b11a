"""The Detokenizer role: token rows -> text deltas, with stop strings.

Per completion it keeps a `Sequence` of the tokens seen and runs the engine's incremental
`Detokenizer` over it. While a completion runs, the last `len(longest stop) - 1` characters
are held back so that streamed text never has to be taken back when a stop string completes.
When a stop string ends a completion it asks the producing replica to abort it. Rows are
deduplicated by their `seq` number, so a replayed row is never applied twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from tideflow.runtime.dataflow.role import AbortUpstream, Emission, StageContext, StageRole
from tideflow.runtime.edges.rows import to_batch
from tideflow.runtime.edges import schemas
from tideflow.runtime.engine.detokenizer import Detokenizer as IncrementalDetokenizer
from tideflow.runtime.engine.core.sequence import Sequence

_FINISHED_MEMORY = 65536  # finished completions remembered to drop their late rows


@dataclass(slots=True)
class _Completion:
    seq: Sequence
    next_seq: int = 0  # the next row number expected
    sent_chars: int = 0  # characters of output_text already sent


class Detokenizer(StageRole):
    consumes = schemas.TOKENS
    produces = schemas.OUTPUTS
    routing = "sticky"  # all rows of a request reach the same replica

    def __init__(self, context: StageContext):
        super().__init__(context)
        from tideflow.models import load_tokenizer

        opts = context.options
        tokenizer = load_tokenizer(opts.get("tokenizer") or opts["model"], opts.get("trust_remote_code", False))
        self.detok = IncrementalDetokenizer(tokenizer)
        self.live: dict[tuple[str, int], _Completion] = {}
        self.finished: dict[tuple[str, int], None] = {}  # insertion-ordered, bounded
        self.rows: list[dict] = []
        self.aborts: dict[int, list[tuple[str, int]]] = {}  # producer replica -> completions to stop

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        for row in batch.to_pylist():
            key = (row["request_id"], row["index"])
            if row["error"]:
                self._emit_error(row)
                continue
            if key in self.finished:
                continue  # a late or replayed row of a finished completion
            comp = self.live.get(key)
            if comp is None:
                if row["seq"] != 0:
                    continue
                prompt = row["prompt_token_ids"]
                params = schemas.row_to_params(row["sampling"])
                comp = _Completion(Sequence(key[0], key[1], list(prompt), len(prompt), params, max_tokens=1 << 30))
                self.live[key] = comp
            if row["seq"] < comp.next_seq:
                continue  # duplicate
            comp.next_seq = row["seq"] + 1
            self._apply(comp, row)

    def _apply(self, comp: _Completion, row: dict) -> None:
        seq = comp.seq
        new_ids, stop = [], None
        for token in row["new_token_ids"]:
            seq.token_ids.append(token)
            new_ids.append(token)
            stop = self.detok.update(seq)
            if stop is not None:
                break
        finished = row["finished"] or stop is not None
        stop_token = None
        if stop is not None:
            reason, stop_reason = "stop", stop
            if not row["finished"]:
                self.aborts.setdefault(row["producer"], []).append((seq.request_id, seq.index))
        else:
            reason, stop_reason, stop_token = row["finish_reason"], row["stop_reason"], row["stop_token_id"]
            if finished:
                self.detok.flush(seq)
        end = len(seq.output_text)
        if not finished and seq.params.stop:
            end -= max(len(s) for s in seq.params.stop) - 1
        text = seq.output_text[comp.sent_chars : end] if end > comp.sent_chars else ""
        comp.sent_chars = max(comp.sent_chars, end)
        self.rows.append(
            {
                "request_id": seq.request_id,
                "index": seq.index,
                "seq": row["seq"],
                "new_token_ids": new_ids,
                "text": text,
                "logprobs": row["logprobs"],
                "finished": finished,
                "finish_reason": reason if finished else None,
                "stop_reason": stop_reason if finished else None,
                "stop_token_id": stop_token if finished else None,
                "prompt_token_ids": row["prompt_token_ids"] if row["seq"] == 0 else None,
            }
        )
        if finished:
            key = (seq.request_id, seq.index)
            del self.live[key]
            self.finished[key] = None
            if len(self.finished) > _FINISHED_MEMORY:
                self.finished.pop(next(iter(self.finished)))

    def _emit_error(self, row: dict) -> None:
        self.rows.append(
            {"request_id": row["request_id"], "index": row["index"], "seq": row["seq"], "new_token_ids": [],
             "text": "", "finished": True, "finish_reason": "error", "error": row["error"]}
        )

    def poll(self) -> list:
        out: list = [AbortUpstream(producer, targets) for producer, targets in self.aborts.items()]
        self.aborts = {}
        if self.rows:
            out.append(Emission(to_batch(self.rows, self.produces)))
            self.rows = []
        return out

    def has_work(self) -> bool:
        return bool(self.rows) or bool(self.aborts)

    def load(self) -> int:
        return len(self.live)

    def abort(self, targets: list[tuple[str, int | None]]) -> None:
        for rid, index in targets:
            for key in [k for k in self.live if k[0] == rid and index in (None, k[1])]:
                del self.live[key]
                self.finished[key] = None

    def snapshot(self) -> dict:
        live = []
        for (rid, index), c in self.live.items():
            seq = c.seq
            live.append({
                "request_id": rid, "index": index, "token_ids": list(seq.token_ids),
                "num_prompt_tokens": seq.num_prompt_tokens, "params": schemas.params_to_row(seq.params),
                "output_text": seq.output_text, "prefix_offset": seq.prefix_offset, "read_offset": seq.read_offset,
                "next_seq": c.next_seq, "sent_chars": c.sent_chars,
            })
        return {
            "live": live,
            "finished": [list(k) for k in self.finished],
            "rows": list(self.rows),
            "aborts": [[p, [list(t) for t in targets]] for p, targets in self.aborts.items()],
        }

    def restore(self, state: dict) -> None:
        for c in state["live"]:
            params = schemas.row_to_params(c["params"])
            seq = Sequence(c["request_id"], c["index"], list(c["token_ids"]), c["num_prompt_tokens"], params, max_tokens=1 << 30)
            seq.output_text, seq.prefix_offset, seq.read_offset = c["output_text"], c["prefix_offset"], c["read_offset"]
            self.live[(c["request_id"], c["index"])] = _Completion(seq, c["next_seq"], c["sent_chars"])
        self.finished = {tuple(k): None for k in state["finished"]}
        self.rows = list(state["rows"])
        self.aborts = {p: [tuple(t) for t in targets] for p, targets in state["aborts"]}
