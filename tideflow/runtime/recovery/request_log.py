"""Recorded request logs: what `tideflow replay` (tideflow/replay.py) runs again against a graph.

`graph.deploy(request_log=DIR)` makes the handle append every finished request to `DIR`: its
request row (the REQUESTS schema the graph's ingress takes) and the tokens and text it
produced, one Arrow IPC file per handle (`requests-{pid}-{n}.arrow`), plus `meta.json` naming
the graph and model. `read_log(DIR)` reads them back as `Recorded` requests.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass

import pyarrow as pa

from tideflow.runtime.edges import schemas

RECORD = pa.schema(
    list(schemas.REQUESTS)
    + [
        pa.field("output_token_ids", pa.list_(pa.list_(pa.int32()))),  # completion index -> token ids
        pa.field("output_text", pa.list_(pa.string())),  # completion index -> text
    ]
)


class RequestLog:
    """Appends finished requests to an Arrow IPC file under `directory` (thread-safe)."""

    def __init__(self, directory: str, meta: dict):
        import pyarrow.ipc as ipc

        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "meta.json"), "w") as f:
            json.dump(meta, f)
        self.path = os.path.join(directory, f"requests-{os.getpid()}-{uuid.uuid4().hex[:8]}.arrow")
        self._sink = pa.OSFile(self.path, "wb")
        self._writer = ipc.new_stream(self._sink, RECORD)
        self._lock = threading.Lock()

    def append(self, rows: list[dict], outputs: list) -> None:
        """`rows`: request rows as sent; `outputs`: their finished `RequestOutput`s."""
        records = [
            {**row, "output_token_ids": [c.token_ids for c in out.outputs], "output_text": [c.text for c in out.outputs]}
            for row, out in zip(rows, outputs)
        ]
        with self._lock:
            self._writer.write_batch(pa.RecordBatch.from_pylist(records, schema=RECORD))
            self._sink.flush()

    def close(self) -> None:
        with self._lock:
            self._writer.close()
            self._sink.close()


@dataclass(slots=True)
class Recorded:
    """One recorded request."""

    request_id: str
    prompt: str | dict  # as `generate` takes it
    params: object  # SamplingParams
    token_ids: list[list[int]]  # per completion
    text: list[str]


def read_log(directory: str) -> tuple[dict, list[Recorded]]:
    """The log's meta data and its requests, in the order they were recorded."""
    import pyarrow.ipc as ipc

    if not os.path.isdir(directory):
        raise ValueError(f"log_dir: {directory!r} is not a directory")
    meta_path = os.path.join(directory, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    files = sorted(f for f in os.listdir(directory) if f.startswith("requests-") and f.endswith(".arrow"))
    if not files:
        raise ValueError(f"log_dir: {directory!r} holds no recorded requests (requests-*.arrow)")
    records = []
    for name in files:
        with pa.OSFile(os.path.join(directory, name), "rb") as f:
            try:
                reader = ipc.open_stream(f)
                rows = [r for batch in reader for r in batch.to_pylist()]
            except pa.ArrowInvalid:
                rows = []
        for row in rows:
            records.append(Recorded(row["request_id"], _prompt(row), schemas.row_to_params(row["sampling"]),
                                    row["output_token_ids"], row["output_text"]))
    return meta, records


def _prompt(row: dict) -> str | dict:
    if row["prompt_token_ids"] is not None:
        prompt = {"prompt_token_ids": row["prompt_token_ids"]}
    elif row["messages"] is not None:
        prompt = {"messages": json.loads(row["messages"])}
    else:
        prompt = {"prompt": row["prompt"]} if row.get("images") else row["prompt"]
    if row.get("images"):
        prompt["multi_modal_data"] = {"image": row["images"]}
    return prompt
