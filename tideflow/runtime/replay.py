"""Recorded request logs and replaying them against a graph (regression tests of a model or
configuration change).

`graph.deploy(request_log=DIR)` makes the handle append every finished request to `DIR`: its
request row (the REQUESTS schema the graph's ingress takes) and the tokens and text it
produced, one Arrow IPC file per handle (`requests-{pid}-{n}.arrow`), plus `meta.json` naming
the graph and model. `replay(DIR, graph)` runs the same requests through another graph (or
the same with another model) and returns the ones whose outputs differ.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass

import pyarrow as pa

from tideflow.graphs import schemas

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


@dataclass(slots=True)
class Difference:
    request_id: str
    recorded: list[list[int]]  # token ids per completion, as recorded
    replayed: list[list[int]] | None  # None: the request failed on replay
    error: str | None = None


def replay(records: list[Recorded], run) -> list[Difference]:
    """Run the recorded requests with `run(prompts, params) -> [RequestOutput]` and return
    those whose tokens differ (or that failed)."""
    from tideflow.runtime.collector import RequestError

    if not records:
        return []
    prompts, params = [r.prompt for r in records], [r.params for r in records]
    try:
        outputs = run(prompts, params)
    except RequestError:  # replay one by one to name the failures
        outputs = []
        for p, sp in zip(prompts, params):
            try:
                outputs.append(run([p], [sp])[0])
            except RequestError as exc:
                outputs.append(exc)
    diffs = []
    for rec, out in zip(records, outputs):
        if isinstance(out, Exception):
            diffs.append(Difference(rec.request_id, rec.token_ids, None, str(out)))
            continue
        got = [c.token_ids for c in out.outputs]
        if got != rec.token_ids:
            diffs.append(Difference(rec.request_id, rec.token_ids, got))
    return diffs


def graph_from_arg(spec: str, model: str | None, dtype: str | None = None):
    """A graph from `--graph` (colocated | disaggregated | a YAML file) and `--model`."""
    from tideflow.graphs import Graph
    from tideflow.graphs.builtin import colocated, disaggregated

    options = {"dtype": dtype} if dtype else {}
    if spec in ("colocated", "disaggregated"):
        if not model:
            raise ValueError("model: a built-in graph needs --model (or a log whose meta.json names one)")
        return (colocated if spec == "colocated" else disaggregated)(model, **options)
    if not os.path.exists(spec):
        raise ValueError(f"graph: {spec!r} is neither a built-in graph (colocated, disaggregated) nor a YAML file")
    graph = Graph.from_yaml(spec)
    if model or options:
        from dataclasses import replace

        rebuilt = Graph(graph.name)
        for s in graph.stages:
            opts = s.options_dict
            if "model" in opts:
                opts = {**opts, **({"model": model} if model else {}), **options}
            rebuilt.add_stage(replace(s, options=opts))
        for e in graph.edges:
            rebuilt.connect(e.src, e.dst, e.queue_size)
        graph = rebuilt
    return graph
