"""`tideflow replay`: run a recorded request log (`deploy(request_log=...)`) against a graph and
report the requests whose tokens differ, e.g. after a model or kernel change."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tideflow.runtime.recovery.request_log import Recorded


@dataclass(slots=True)
class Difference:
    request_id: str
    recorded: list[list[int]]  # token ids per completion, as recorded
    replayed: list[list[int]] | None  # None: the request failed on replay
    error: str | None = None


def replay(records: list[Recorded], run) -> list[Difference]:
    """Run the recorded requests with `run(prompts, params) -> [RequestOutput]` and return
    those whose tokens differ (or that failed)."""
    from tideflow.runtime.dataflow.collector import RequestError

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
    """A graph from `--graph` (a built-in graph's name or a YAML file) and `--model`."""
    from tideflow.graphs import BUILTIN_GRAPHS, Graph

    options = {"dtype": dtype} if dtype else {}
    if spec in BUILTIN_GRAPHS:
        if not model:
            raise ValueError("model: a built-in graph needs --model (or a log whose meta.json names one)")
        return BUILTIN_GRAPHS[spec](model, **options)
    if not os.path.exists(spec):
        raise ValueError(f"graph: {spec!r} is neither a built-in graph ({', '.join(BUILTIN_GRAPHS)}) nor a YAML file")
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
