"""Running a compiled graph in one process, without Ray (tests, notebooks).

Every replica of every stage is instantiated here; batches move between them synchronously
through the same routers the deployed graph uses. One pass polls each stage in topological
order; passes repeat until every request has its final output.
"""

from __future__ import annotations

import dataclasses
import itertools

from tideflow.runtime.dataflow.role import AbortUpstream, StageContext
from tideflow.runtime.dataflow.router import Router
from tideflow.outputs import RequestOutput
from tideflow.runtime.dataflow.collector import OutputCollector
from tideflow.runtime.dataflow.ingress import normalize, request_batch, request_row


class InProcessGraph:
    def __init__(self, compiled):
        self.graph = compiled
        self.roles = {
            s.name: [compiled.roles[s.name](_unsharded(compiled.context(s.name, i))) for i in range(s.replicas)]
            for s in compiled.stages
        }
        self.routers = {
            s.name: Router(s.replicas, compiled.roles[s.name].routing, block_size=compiled.configs[s.name].kv_block_size)
            for s in compiled.stages
        }
        self.collector = OutputCollector()
        self._ids = itertools.count()

    def generate(self, prompts, sampling_params=None) -> list[RequestOutput]:
        prompts, params = normalize(prompts, sampling_params)
        ids = [f"{self.graph.name}-{next(self._ids)}" for _ in prompts]
        rows = [request_row(rid, p, sp) for rid, p, sp in zip(ids, prompts, params)]  # validates before queueing
        for row, sp in zip(rows, params):
            self.collector.register(row["request_id"], row.get("prompt"), sp.n)
        self._deliver(self.graph.source, request_batch(rows), None)
        while self.collector.unfinished():
            if not self._pass():
                raise RuntimeError(f"graph {self.graph.name!r} stalled with {len(self.collector.unfinished())} unfinished requests")
        return [self.collector.pop(rid) for rid in ids]

    def _pass(self) -> bool:
        progressed = False
        for stage in self.graph.stages:
            for role in self.roles[stage.name]:
                if not role.has_work():
                    continue
                for item in role.poll():
                    progressed = True
                    if isinstance(item, AbortUpstream):
                        for up in self.graph.upstream(stage.name):
                            self.roles[up][item.producer].abort(item.targets)
                    elif stage.name == self.graph.sink:
                        self.collector.add(item.batch)
                    else:
                        for down in self.graph.downstream(stage.name):
                            self._deliver(down, item.batch, item.attachments)
        return progressed

    def _deliver(self, stage: str, batch, attachments) -> None:
        router = self.routers[stage]
        for replica, part in router.split(batch).items():
            role = self.roles[stage][replica]
            role.push(part, attachments)
            router.observe_load(replica, role.load())

    def stats(self) -> dict:
        return {name: [r.stats() for r in roles] for name, roles in self.roles.items()}

    def close(self) -> None:
        for roles in self.roles.values():
            for role in roles:
                role.close()


def run_graph(compiled, prompts, sampling_params=None) -> list[RequestOutput]:
    graph = InProcessGraph(compiled)
    try:
        return graph.generate(prompts, sampling_params)
    finally:
        graph.close()


def _unsharded(context: StageContext) -> StageContext:
    """One process runs every stage whole: a stage's `shards` split it over actors only when
    the graph is deployed."""
    engine = context.config.engine
    if engine is None or engine.parallel.tensor_parallel_size == 1:
        return context
    engine = dataclasses.replace(engine, parallel=dataclasses.replace(engine.parallel, tensor_parallel_size=1))
    return dataclasses.replace(context, config=dataclasses.replace(context.config, engine=engine))
