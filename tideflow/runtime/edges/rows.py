"""Building and reading edge rows: what engine-owning roles emit, and the logprob encoding.

Rows are built as Python dicts per request (not per token) and turned into one
`pa.RecordBatch` per poll; token lists stay lists of ints.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pyarrow as pa

from tideflow.outputs import Logprob
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


def to_batch(rows: list[dict], schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=schema)


def error_row(request_id: str, message: str, producer: int = 0) -> dict:
    """A TOKENS row that ends a request which could not run."""
    return {
        "request_id": request_id,
        "index": 0,
        "seq": 0,
        "new_token_ids": [],
        "finished": True,
        "finish_reason": "error",
        "producer": producer,
        "error": message,
    }


class TokenStream:
    """What each completion has sent downstream so far; turns new tokens into TOKENS rows.
    Row `seq` numbers count 0, 1, 2 ... per (request_id, index): the exactly-once key."""

    def __init__(self, producer: int):
        self.producer = producer
        self.sent: dict[tuple[str, int], list[int]] = {}  # (request_id, index) -> [rows sent, tokens sent]

    def step_rows(self, out: EngineOutput, completion: Callable[[str, int], Sequence]) -> list[dict]:
        """A row per completion of one engine step, carrying the tokens the step appended.
        `completion(request_id, index)` is asked for a completion's sequence only when this
        is its first row (which repeats the prompt, the params and the prefix cache hit)."""
        rows = []
        for row, (rid, index) in enumerate(zip(out.request_ids, out.indexes)):
            key = (rid, index)
            state = self.sent.get(key)
            first = completion(rid, index) if state is None or state[0] == 0 else None
            rows.append(self._row(
                key, state, first, out.new_token_ids(row), encode_logprobs(out.new_logprobs(row)),
                out.finished[row], out.finish_reasons[row], out.stop_reasons[row],
            ))
        return rows

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
        if finished:
            self.sent.pop(key, None)
        elif state is None:
            self.sent[key] = [1, len(new)]
        else:
            state[0], state[1] = num_rows + 1, num_tokens + len(new)
        return row

    def forget(self, request_id: str, index: int | None = None) -> None:
        """Drop the progress of an aborted completion (every completion when index is None)."""
        for key in [k for k in self.sent if k[0] == request_id and index in (None, k[1])]:
            del self.sent[key]
