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
import pyarrow.compute  # noqa: F401  (pa.compute)

from tideflow.runtime.dataflow.role import AbortUpstream, Emission, StageContext, StageRole
from tideflow.runtime.edges.error_rows import error_row
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
    requires_model = True
    takes_extra_options = False

    def __init__(self, context: StageContext):
        super().__init__(context)
        from tideflow.models.text_tokenizer import load_text_tokenizer

        model = context.config.model  # tokenizer.json through `tokenizers`: no torch in this process
        tokenizer = load_text_tokenizer(model.tokenizer or model.model, model.trust_remote_code)
        self.detok = IncrementalDetokenizer(tokenizer)
        self.live: dict[tuple[str, int], _Completion] = {}
        self.finished: dict[tuple[str, int], None] = {}  # insertion-ordered, bounded
        self.pending: list[pa.RecordBatch] = []  # OUTPUTS batches to send
        self.errors: list[dict] = []  # OUTPUTS rows of failed requests to send
        self.aborts: dict[int, list[tuple[str, int]]] = {}  # producer replica -> completions to stop

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        """Reads the batch by column. The rows it keeps go out with their request id, index,
        seq, prompt ids, logprobs and (unless a stop string cut them) token ids taken from the
        input's Arrow buffers; only the text and the finish columns are built here."""
        n = batch.num_rows
        rids = batch.column("request_id").to_pylist()
        indices = batch.column("index").to_numpy(zero_copy_only=False)
        seqnos = batch.column("seq").to_numpy(zero_copy_only=False)
        errors = batch.column("error")
        errors = errors.to_pylist() if errors.null_count < n else None
        tokens = batch.column("new_token_ids")
        offsets, values = tokens.offsets.to_numpy(), tokens.values.to_numpy(zero_copy_only=False)
        fields = _RowFields(batch)
        keep: list[int] = []
        out = _OutColumns()
        for i in range(n):
            key = (rids[i], int(indices[i]))
            if errors is not None and errors[i]:
                self.errors.append(error_row(schemas.OUTPUTS, rids[i], errors[i], index=key[1], seq=int(seqnos[i])))
                continue
            if key in self.finished:
                continue  # a late or replayed row of a finished completion
            comp = self.live.get(key)
            if comp is None:
                if seqnos[i] != 0:
                    continue
                prompt = fields.prompt(i)
                params = schemas.row_to_params(fields.sampling(i))
                comp = _Completion(Sequence(key[0], key[1], prompt, len(prompt), params, max_tokens=1 << 30))
                self.live[key] = comp
            if seqnos[i] < comp.next_seq:
                continue  # duplicate
            comp.next_seq = int(seqnos[i]) + 1
            keep.append(i)
            self._apply(comp, values[offsets[i] : offsets[i + 1]].tolist(), fields, i, out)
        if keep:
            self.pending.append(out.batch(batch, keep))

    def _apply(self, comp: _Completion, new_ids: list[int], fields: _RowFields, i: int, out: _OutColumns) -> None:
        seq = comp.seq
        stop, applied = None, 0
        for token in new_ids:
            seq.token_ids.append(token)
            applied += 1
            stop = self.detok.update(seq)
            if stop is not None:
                break
        row_finished = bool(fields.finished[i])
        finished = row_finished or stop is not None
        stop_token = None
        if stop is not None:
            reason, stop_reason = "stop", stop
            if not row_finished:
                self.aborts.setdefault(fields.producer(i), []).append((seq.request_id, seq.index))
        else:
            reason, stop_reason, stop_token = fields.finish_reason[i], fields.stop_reason[i], fields.stop_token_id[i]
            if finished:
                self.detok.flush(seq)
        end = len(seq.output_text)
        if not finished and seq.params.stop:
            end -= max(len(s) for s in seq.params.stop) - 1
        text = seq.output_text[comp.sent_chars : end] if end > comp.sent_chars else ""
        comp.sent_chars = max(comp.sent_chars, end)
        out.add(text, finished, reason, stop_reason, stop_token, new_ids[:applied] if applied < len(new_ids) else None)
        if finished:
            key = (seq.request_id, seq.index)
            del self.live[key]
            self.finished[key] = None
            if len(self.finished) > _FINISHED_MEMORY:
                self.finished.pop(next(iter(self.finished)))

    def poll(self) -> list:
        out: list = [AbortUpstream(producer, targets) for producer, targets in self.aborts.items()]
        self.aborts = {}
        if self.errors:
            out.append(Emission(to_batch(self.errors, self.produces)))
            self.errors = []
        out += [Emission(b) for b in self.pending]
        self.pending = []
        return out

    def has_work(self) -> bool:
        return bool(self.pending) or bool(self.errors) or bool(self.aborts)

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
            "rows": [r for b in self.pending for r in b.to_pylist()] + list(self.errors),
            "aborts": [[p, [list(t) for t in targets]] for p, targets in self.aborts.items()],
        }

    def restore(self, state: dict) -> None:
        for c in state["live"]:
            params = schemas.row_to_params(c["params"])
            seq = Sequence(c["request_id"], c["index"], list(c["token_ids"]), c["num_prompt_tokens"], params, max_tokens=1 << 30)
            seq.output_text, seq.prefix_offset, seq.read_offset = c["output_text"], c["prefix_offset"], c["read_offset"]
            self.live[(c["request_id"], c["index"])] = _Completion(seq, c["next_seq"], c["sent_chars"])
        self.finished = {tuple(k): None for k in state["finished"]}
        self.pending = [to_batch(state["rows"], self.produces)] if state["rows"] else []
        self.aborts = {p: [tuple(t) for t in targets] for p, targets in state["aborts"]}


class _RowFields:
    """The TOKENS columns the detokenizer reads per row, read once per batch."""

    def __init__(self, batch: pa.RecordBatch):
        self.batch = batch
        self.finished = batch.column("finished").to_numpy(zero_copy_only=False)
        self.finish_reason = batch.column("finish_reason").to_pylist()
        self.stop_reason = batch.column("stop_reason").to_pylist()
        self.stop_token_id = batch.column("stop_token_id").to_pylist()
        self._producer = batch.column("producer")

    def prompt(self, i: int) -> list[int]:
        return self.batch.column("prompt_token_ids")[i].as_py() or []

    def sampling(self, i: int) -> dict:
        return self.batch.column("sampling")[i].as_py()

    def producer(self, i: int) -> int:
        return self._producer[i].as_py()


class _OutColumns:
    """The OUTPUTS columns the detokenizer makes (text, finish state, token ids cut by a stop
    string); the rest are taken from the input batch."""

    def __init__(self):
        self.text: list[str] = []
        self.finished: list[bool] = []
        self.finish_reason: list[str | None] = []
        self.stop_reason: list[str | None] = []
        self.stop_token_id: list[int | None] = []
        self.cut: dict[int, list[int]] = {}  # kept row -> its token ids when a stop string cut them

    def add(self, text: str, finished: bool, reason, stop_reason, stop_token, cut: list[int] | None) -> None:
        if cut is not None:
            self.cut[len(self.text)] = cut
        self.text.append(text)
        self.finished.append(finished)
        self.finish_reason.append(reason if finished else None)
        self.stop_reason.append(stop_reason if finished else None)
        self.stop_token_id.append(stop_token if finished else None)

    def batch(self, source: pa.RecordBatch, keep: list[int]) -> pa.RecordBatch:
        taken = source.take(pa.array(keep, pa.int64()))
        tokens = taken.column("new_token_ids")
        if self.cut:
            tokens = pa.array([self.cut.get(k, v) for k, v in enumerate(tokens.to_pylist())], pa.list_(pa.int32()))
        seq = taken.column("seq")
        prompts = pa.compute.if_else(pa.compute.equal(seq, 0), taken.column("prompt_token_ids"),
                                     pa.nulls(len(keep), pa.list_(pa.int32())))
        columns = {
            "request_id": taken.column("request_id"), "index": taken.column("index"), "seq": seq,
            "new_token_ids": tokens, "text": pa.array(self.text, pa.string()), "logprobs": taken.column("logprobs"),
            "finished": pa.array(self.finished, pa.bool_()), "finish_reason": pa.array(self.finish_reason, pa.string()),
            "stop_reason": pa.array(self.stop_reason, pa.string()),
            "stop_token_id": pa.array(self.stop_token_id, pa.int32()), "prompt_token_ids": prompts,
            "error": pa.nulls(len(keep), pa.string()), "prompt_logprobs": taken.column("prompt_logprobs"),
            "embedding": taken.column("embedding"),
        }
        return pa.RecordBatch.from_arrays([columns[f.name] for f in schemas.OUTPUTS], schema=schemas.OUTPUTS)
