"""Deploying a graph onto Ray actors, and the handle clients use.

`deploy(graph)` starts (or joins) Ray, compiles the graph against the live cluster, starts
one `StageActor` per replica (named `{graph}/{stage}/{index}` in the `tideflow` namespace),
wires each to the replicas downstream, starts their loops, and starts the collector that
is the graph's sink and watches every replica.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from tideflow.actors.base import StageContext
from tideflow.actors.router import Router
from tideflow.outputs import RequestOutput
from tideflow.runtime.collector import RequestError, copy_output, empty_output
from tideflow.runtime.ingress import normalize, request_batch, request_row

NAMESPACE = "tideflow"


def deploy(graph, address: str | None = None, *, inbox_size: int | None = None, ray_init: dict | None = None) -> "GraphHandle":
    """Start `graph` on Ray and return its handle. `address` joins an existing cluster
    ("auto" or "ray://..."); None starts a local Ray instance unless one is running.
    `inbox_size` overrides every edge's queue size."""
    import ray

    from tideflow.runtime.collector_actor import CollectorActor
    from tideflow.runtime.stage_actor import StageActor, Wiring

    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, **(ray_init or {}))
    compiled = graph.compile() if hasattr(graph, "compile") else graph
    for spec in compiled.stages:
        for i in range(spec.replicas):
            name = f"{compiled.name}/{spec.name}/{i}"
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                continue
            raise ValueError(f"graph {compiled.name!r} is already deployed (actor {name} exists)")

    stage_cls = ray.remote(StageActor)
    actors: dict[str, list] = {}
    for spec in compiled.stages:
        queue = inbox_size or max((e.queue_size for e in compiled.edges if e.dst == spec.name), default=8)
        opts = dict(
            namespace=NAMESPACE, num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, resources=spec.resources_dict,
            max_concurrency=64, max_restarts=0,
        )
        actors[spec.name] = [
            stage_cls.options(name=f"{compiled.name}/{spec.name}/{i}", **opts).remote(
                compiled.roles[spec.name], StageContext(compiled.name, spec.name, i, spec.options_dict), queue
            )
            for i in range(spec.replicas)
        ]
    collector = ray.remote(CollectorActor).options(
        name=f"{compiled.name}/collector", namespace=NAMESPACE, num_cpus=0, max_concurrency=1000
    ).remote()
    wiring = []
    for spec in compiled.stages:
        block_size = int(spec.options_dict.get("block_size", 16))
        w = Wiring(
            downstream={d: actors[d] for d in compiled.downstream(spec.name)},
            routing={d: compiled.roles[d].routing for d in compiled.downstream(spec.name)},
            upstream={u: actors[u] for u in compiled.upstream(spec.name)},
            sink=collector if spec.name == compiled.sink else None,
            collector=collector,
            block_size=block_size,
        )
        wiring += [a.connect.remote(w) for a in actors[spec.name]]
    try:
        ray.get(wiring)  # also surfaces constructor failures (bad model path ...)
    except Exception:
        for handles in actors.values():
            for a in handles:
                ray.kill(a)
        ray.kill(collector)
        raise
    runs = {
        f"{compiled.name}/{spec.name}/{i}": [a.run.remote()]
        for spec in compiled.stages
        for i, a in enumerate(actors[spec.name])
    }
    watch = collector.watch.remote(runs)
    return GraphHandle(compiled, actors, collector, runs, watch)


class GraphHandle:
    """A deployed graph: `generate` (like `LLM.generate`), `submit` (streaming), `stats`, `shutdown`."""

    def __init__(self, compiled, actors, collector, runs, watch):
        self.graph = compiled
        self.actors = actors
        self.collector = collector
        self._runs = runs
        self._watch = watch
        source = compiled.stage(compiled.source)
        self._router = Router(source.replicas, compiled.roles[source.name].routing)
        self._ids = itertools.count()
        self._closed = False

    # -- requests -----------------------------------------------------------------------------
    def _new_ids(self, count: int) -> list[str]:
        return [f"{self.graph.name}-{next(self._ids)}" for _ in range(count)]

    def _ingest_refs(self, rows: list[dict]) -> list:
        sources = self.actors[self.graph.source]
        return [sources[r].push.remote(part) for r, part in self._router.split(request_batch(rows)).items()]

    def generate(self, prompts, sampling_params=None) -> list[RequestOutput]:
        """Run every prompt to completion; outputs in prompt order. A request that fails inside
        the graph (bad input, a dead stage) raises RequestError (a ValueError) after the rest finish."""
        import ray

        prompts, params = normalize(prompts, sampling_params)
        ids = self._new_ids(len(prompts))
        rows = [request_row(rid, p, sp) for rid, p, sp in zip(ids, prompts, params)]
        ray.get(self.collector.register.remote([(r["request_id"], r.get("prompt"), sp.n) for r, sp in zip(rows, params)]))
        ray.get(self._ingest_refs(rows))
        results = ray.get(self.collector.collect.remote(ids))
        errors = [r for r in results if isinstance(r, str)]
        if errors:
            raise RequestError(f"{len(errors)} of {len(results)} requests failed; first: {errors[0]}")
        return results

    async def submit(self, prompt, sampling_params=None) -> AsyncIterator[RequestOutput]:
        """Stream one request: yields its cumulative output (a fresh copy) each time it grows;
        the last one is finished. The collector sends only what is new (`OutputDelta`), so
        what crosses Ray per step does not grow with the output. Closing the iterator early
        aborts the request."""
        (prompt,), (params,) = normalize(prompt, sampling_params)
        (rid,) = self._new_ids(1)
        row = request_row(rid, prompt, params)
        await self.collector.register.remote([(rid, row.get("prompt"), params.n)])
        await asyncio.gather(*self._ingest_refs([row]))
        out = empty_output(rid, row.get("prompt"), params.n)
        try:
            while not out.finished:
                delta = await self.collector.next.remote(rid)
                if delta is None:  # cancelled meanwhile (abort from elsewhere)
                    return
                if isinstance(delta, str):
                    raise RequestError(delta)
                delta.apply_to(out)
                yield copy_output(out)
        finally:
            if not out.finished:
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        """Stop a request everywhere it may be (e.g. its client went away)."""
        for handles in self.actors.values():
            for a in handles:
                a.abort.remote([(request_id, None)])
        self.collector.cancel.remote(request_id)

    # -- operations ---------------------------------------------------------------------------
    def stats(self) -> dict:
        """Per stage, per replica: engine counters (running, waiting, KV usage, prefix hits),
        load and inbox depth; plus the collector's view."""
        import ray

        names = [(s, i, a) for s, handles in self.actors.items() for i, a in enumerate(handles)]
        values = ray.get([a.stats.remote() for _, _, a in names])
        stats: dict = {s: [None] * len(h) for s, h in self.actors.items()}
        for (s, i, _), v in zip(names, values):
            stats[s][i] = v
        stats["collector"] = ray.get(self.collector.status.remote())
        return stats

    def shutdown(self) -> None:
        import ray

        if self._closed:
            return
        self._closed = True
        ray.get(self.collector.close.remote())
        handles = [a for hs in self.actors.values() for a in hs]
        for a in handles:
            a.stop.remote()
        ray.wait([r[0] for r in self._runs.values()], num_returns=len(self._runs), timeout=30)
        for a in handles:
            ray.kill(a)
        ray.kill(self.collector)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
