"""The one shape of a failed request's row, on any edge.

A request that cannot run (a prompt the tokenizer or the engine rejects, an image the
encoder cannot read) travels on downstream as a finished row with `finish_reason` "error"
and the reason in `error`, so that the sink fails it exactly once and every stage between
passes it along. `error_row` builds that row for whichever edge schema it goes out on.
"""

from __future__ import annotations

import pyarrow as pa


def error_row(schema: pa.Schema, request_id: str, message: str, *, index: int = 0, seq: int = 0,
              producer: int = 0) -> dict:
    """A row of `schema` that ends completion `index` of `request_id` with `message` (only the
    fields the schema has; the rest of its columns are null)."""
    row = {
        "request_id": request_id,
        "index": index,  # the completion (0: the whole request, before it was split into n)
        "seq": seq,  # its exactly-once row number
        "prompt_token_ids": [],
        "new_token_ids": [],
        "text": "",
        "finished": True,
        "finish_reason": "error",
        "producer": producer,  # the replica that failed it (aborts go back to it)
        "error": message,
    }
    return {k: v for k, v in row.items() if schema.get_field_index(k) >= 0}
