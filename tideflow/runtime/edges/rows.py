"""Building and reading edge rows: what engine-owning roles emit, and the logprob encoding.

Rows are built as Python dicts per request (not per token) and turned into one
`pa.RecordBatch` per poll; token lists stay lists of ints.
"""

from __future__ import annotations

import msgpack
import pyarrow as pa

from tideflow.runtime.edges import schemas
from tideflow.outputs import Logprob
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

    def rows(self, seqs: list[Sequence], num_cached: dict | None = None) -> list[dict]:
        rows = []
        for seq in seqs:
            key = (seq.request_id, seq.index)
            state = self.sent.setdefault(key, [0, 0])
            num_rows, num_tokens = state
            new = seq.token_ids[seq.num_prompt_tokens + num_tokens :]
            if not new and not seq.finished:
                continue
            row = {
                "request_id": seq.request_id,
                "index": seq.index,
                "seq": num_rows,
                "new_token_ids": new,
                "logprobs": encode_logprobs(seq.logprobs[num_tokens:]) if seq.logprobs is not None else None,
                "finished": seq.finished,
                "finish_reason": seq.finish_reason,
                "stop_reason": seq.stop_reason if isinstance(seq.stop_reason, str) else None,
                "stop_token_id": seq.stop_reason if isinstance(seq.stop_reason, int) else None,
                "producer": self.producer,
            }
            if num_rows == 0:
                row["prompt_token_ids"] = seq.token_ids[: seq.num_prompt_tokens]
                row["sampling"] = schemas.params_to_row(seq.params)
                row["num_cached_tokens"] = seq.num_cached_tokens
            state[0], state[1] = num_rows + 1, num_tokens + len(new)
            if seq.finished:
                del self.sent[key]
            rows.append(row)
        return rows

    def forget(self, request_id: str, index: int | None = None) -> None:
        """Drop the progress of an aborted completion (every completion when index is None)."""
        for key in [k for k in self.sent if k[0] == request_id and index in (None, k[1])]:
            del self.sent[key]
