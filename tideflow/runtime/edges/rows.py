"""Building and reading edge rows: what engine-owning roles emit, and the logprob encoding.

Rows are built as Python dicts per request (not per token) and turned into one
`pa.RecordBatch` per poll; token lists stay lists of ints.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pyarrow as pa

from tideflow.outputs import Logprob, PromptLogprobs
from tideflow.runtime.edges import schemas
from tideflow.runtime.engine.core.outputs import EngineOutput
from tideflow.runtime.engine.core.sequence import Sequence


def encode_logprobs(entries: list[dict[int, Logprob]] | None) -> bytes | None:
    if entries is None:
        return None
    return msgpack.packb([[[t, lp.logprob, lp.rank] for t, lp in e.items()] for e in entries])


def decode_logprobs(blob: bytes | None) -> list[dict[int, Logprob]] | None:
    if blob is None:
        return None
    return [{t: Logprob(lp, rank) for t, lp, rank in e} for e in msgpack.unpackb(blob)]


def encode_prompt_logprobs(seq: Sequence) -> bytes | None:
    """The prompt logprobs a sequence carries for its request (its first completion's, once its
    prompt is computed), or None when the request did not ask for them."""
    if not seq.wants_prompt_logprobs:
        return None
    return encode_logprobs((seq.prompt_logprobs or [None])[1:])  # entry 0 is always None


def decode_prompt_logprobs(blob: bytes | None) -> PromptLogprobs | None:
    entries = decode_logprobs(blob)
    return None if entries is None else [None, *entries]


def to_batch(rows: list[dict], schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=schema)


class TokenStream:
    """What each completion has sent downstream so far; turns new tokens into TOKENS rows.
    Row `seq` numbers count 0, 1, 2 ... per (request_id, index): the exactly-once key."""

    def __init__(self, producer: int):
        self.producer = producer
        self.sent: dict[tuple[str, int], list[int]] = {}  # (request_id, index) -> [rows sent, tokens sent]

    def step_batch(self, out: EngineOutput, completion: Callable[[str, int], Sequence]) -> pa.RecordBatch | None:
        """The TOKENS batch of one engine step, built column by column: a row per completion,
        its new tokens taken from the step's flat token column and offsets as Arrow's list
        layout (no per-token Python object). `completion(request_id, index)` is asked for a
        completion's sequence only for its first row (which repeats the prompt, the params
        and the prefix-cache hit). None when the step produced nothing."""
        n = len(out)
        if n == 0:
            return None
        seqnos, prompts, sampling, cached = [0] * n, [None] * n, [None] * n, [None] * n
        prompt_logprobs, embeddings = [None] * n, [None] * n
        offsets = out.token_offsets
        for row, key in enumerate(zip(out.request_ids, out.indexes)):
            state = self.sent.get(key)
            num_rows = state[0] if state is not None else 0
            seqnos[row] = num_rows
            if num_rows == 0:
                first = completion(*key)
                prompts[row] = first.token_ids[: first.num_prompt_tokens]
                sampling[row] = schemas.params_to_row(first.params)
                cached[row] = first.num_cached_tokens
                prompt_logprobs[row] = encode_prompt_logprobs(first)
                embeddings[row] = first.embedding() if first.wants_pooling else None
            new = offsets[row + 1] - offsets[row]
            if out.finished[row]:
                self.sent.pop(key, None)
            elif state is None:
                self.sent[key] = [1, new]
            else:
                state[0], state[1] = num_rows + 1, state[1] + new
        stops = out.stop_reasons
        columns = {
            "request_id": pa.array(out.request_ids, pa.string()),
            "index": pa.array(out.indexes, pa.int32()),
            "seq": pa.array(seqnos, pa.int64()),
            "new_token_ids": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(out.token_ids, pa.int32())),
            "logprobs": pa.array([encode_logprobs(out.new_logprobs(r)) for r in range(n)], pa.binary())
            if any(lp is not None for lp in out.logprobs) else pa.nulls(n, pa.binary()),
            "finished": pa.array(out.finished, pa.bool_()),
            "finish_reason": pa.array(out.finish_reasons, pa.string()),
            "stop_reason": pa.array([s if isinstance(s, str) else None for s in stops], pa.string()),
            "stop_token_id": pa.array([s if isinstance(s, int) else None for s in stops], pa.int32()),
            "producer": pa.array([self.producer] * n, pa.int32()),
            "prompt_token_ids": pa.array(prompts, pa.list_(pa.int32())),
            "sampling": pa.array(sampling, schemas.SAMPLING),
            "num_cached_tokens": pa.array(cached, pa.int32()),
            "prompt_logprobs": pa.array(prompt_logprobs, pa.binary()),
            "embedding": pa.array(embeddings, pa.list_(pa.float64())),
            "error": pa.nulls(n, pa.string()),
        }
        return pa.RecordBatch.from_arrays([columns[f.name] for f in schemas.TOKENS], schema=schemas.TOKENS)

    def rows(self, seqs: list[Sequence]) -> list[dict]:
        """A row per sequence with tokens not sent yet (or that finished since): for
        sequences that did not come out of a step here (adopted, passed through, restored)."""
        rows = []
        for seq in seqs:
            key = (seq.request_id, seq.index)
            state = self.sent.get(key)
            num_tokens = state[1] if state is not None else 0
            new = seq.token_ids[seq.num_prompt_tokens + num_tokens :]
            if not new and not seq.finished:
                continue
            logprobs = encode_logprobs(seq.logprobs[num_tokens:]) if seq.logprobs is not None else None
            first = seq if state is None or state[0] == 0 else None
            rows.append(self._row(key, state, first, new, logprobs, seq.finished, seq.finish_reason, seq.stop_reason))
        return rows

    def _row(self, key: tuple[str, int], state: list[int] | None, first: Sequence | None, new: list[int],
             logprobs: bytes | None, finished: bool, finish_reason: str | None, stop_reason: int | str | None) -> dict:
        """The next row of completion `key` (`state`: its progress, None before its first row;
        `first`: its sequence, given for its first row only); records it as sent."""
        num_rows, num_tokens = state if state is not None else (0, 0)
        row = {
            "request_id": key[0],
            "index": key[1],
            "seq": num_rows,
            "new_token_ids": new,
            "logprobs": logprobs,
            "finished": finished,
            "finish_reason": finish_reason,
            "stop_reason": stop_reason if isinstance(stop_reason, str) else None,
            "stop_token_id": stop_reason if isinstance(stop_reason, int) else None,
            "producer": self.producer,
        }
        if first is not None:
            row["prompt_token_ids"] = first.token_ids[: first.num_prompt_tokens]
            row["sampling"] = schemas.params_to_row(first.params)
            row["num_cached_tokens"] = first.num_cached_tokens
            row["prompt_logprobs"] = encode_prompt_logprobs(first)
            row["embedding"] = first.embedding() if first.wants_pooling else None
        if finished:
            self.sent.pop(key, None)
        elif state is None:
            self.sent[key] = [1, len(new)]
        else:
            state[0], state[1] = num_rows + 1, num_tokens + len(new)
        return row

    def resume(self, request_id: str, index: int, rows: int, tokens: int) -> None:
        """Continue a completion that another replica streamed `rows` rows and `tokens` output
        tokens of (request migration): its next row here is seq `rows`."""
        if rows:
            self.sent[(request_id, index)] = [rows, tokens]

    def forget(self, request_id: str, index: int | None = None) -> None:
        """Drop the progress of an aborted completion (every completion when index is None)."""
        for key in [k for k in self.sent if k[0] == request_id and index in (None, k[1])]:
            del self.sent[key]


def concat(rows: list[dict], batch: pa.RecordBatch | None, schema: pa.Schema) -> pa.RecordBatch | None:
    """`rows` (made one by one: errors, first tokens of adopted sequences) followed by
    `batch` as one batch of `schema`, in that order (a completion's rows must arrive in
    `seq` order); None when both are empty."""
    parts = ([to_batch(rows, schema)] if rows else []) + ([batch] if batch is not None else [])
    if len(parts) < 2:
        return parts[0] if parts else None
    return pa.concat_batches(parts)
