"""`compile_graph`: check a `Graph` as a whole and freeze it into a `CompiledGraph`.

The checks, in order (the first failure raises ValueError naming the stage or edge):
the graph has stages; every edge names existing stages; there is no cycle; one source
reaches every stage and every stage reaches one sink; every actor class resolves; each
stage's options parse into a `StageConfig` (known options, right types and values, a model
where the role reads one); each edge's produced schema equals the consumed one; some node of
the cluster can hold one shard of each stage. Nothing here starts Ray or imports torch unless asked for this machine's GPUs.
"""

from __future__ import annotations

import heapq
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from tideflow.actors.registry import resolve_role
from tideflow.runtime.dataflow.role import StageContext, StageRole
from tideflow.runtime.dataflow.stage_config import StageConfig, parse_stage_config
from tideflow.graphs.graph import EdgeSpec, Graph, StageSpec
from tideflow.runtime.edges.schemas import schema_name

_EPS = 1e-9  # slack when comparing fractional resource amounts


@dataclass(frozen=True)
class CompiledGraph:
    """A validated graph, ready for a runtime. Built only by `compile_graph`."""

    name: str  # graph name
    stages: tuple[StageSpec, ...]  # topological order, ties in insertion order; stages[0] is the source
    edges: tuple[EdgeSpec, ...]  # insertion order
    roles: dict[str, type[StageRole]]  # stage name -> resolved role class
    configs: dict[str, StageConfig]  # stage name -> its options, parsed
    source: str  # the one stage with no incoming edge (fed by the graph's ingress)
    sink: str  # the one stage with no outgoing edge (its batches are the graph's output)
    edge_schemas: dict[tuple[str, str], pa.Schema]  # (src, dst) -> schema on that edge

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(f"graph {self.name!r} has no stage {name!r}")

    def context(self, stage: str, replica: int) -> StageContext:
        """What replica `replica` of `stage` is built with: where it runs and its parsed options."""
        self.stage(stage)
        return StageContext(self.name, stage, replica, self.configs[stage])

    def edge(self, src: str, dst: str) -> EdgeSpec:
        for edge in self.edges:
            if edge.src == src and edge.dst == dst:
                return edge
        raise KeyError(f"graph {self.name!r} has no edge '{src} >> {dst}'")

    def downstream(self, stage: str) -> list[str]:
        """Stages fed by `stage`, in edge insertion order."""
        self.stage(stage)
        return [e.dst for e in self.edges if e.src == stage]

    def upstream(self, stage: str) -> list[str]:
        """Stages feeding `stage`, in edge insertion order."""
        self.stage(stage)
        return [e.src for e in self.edges if e.dst == stage]

    def describe(self) -> str:
        """A human-readable table of the stages and edges."""
        lines = [
            f"graph {self.name!r}: {len(self.stages)} stage(s), {len(self.edges)} edge(s); "
            f"source {self.source!r}, sink {self.sink!r}",
            "",
            "stages (topological order):",
        ]
        rows = [("name", "actor", "replicas", "shards", "resources per shard")]
        for spec in self.stages:
            demand = ", ".join(f"{k}={_num(v)}" for k, v in spec.demand().items()) or "-"
            rows.append((spec.name, spec.actor, str(spec.replicas), str(spec.shards), demand))
        lines += _table(rows)
        lines += ["", "options (parsed; defaults left out):"]
        lines += _table([(spec.name, self.configs[spec.name].describe()) for spec in self.stages])
        lines += ["", "edges:"]
        rows = [("edge", "queue", "schema", "fields")]
        for edge in self.edges:
            schema = self.edge_schemas[(edge.src, edge.dst)]
            rows.append((str(edge), str(edge.queue_size), schema_name(schema), ", ".join(schema.names)))
        lines += _table(rows) if self.edges else ["  (none)"]
        return "\n".join(lines)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _quoted(names) -> str:
    return ", ".join(repr(n) for n in names)


# ---- the checks ---------------------------------------------------------------------------


def compile_graph(graph: Graph, cluster: list[dict[str, float]] | None = None) -> CompiledGraph:
    """Validate `graph` and freeze it. `cluster` lists each node's resources
    (`[{"CPU": 8, "GPU": 1, "accelerator_x": 1}, ...]`); None means the alive nodes of the
    connected Ray cluster when Ray is initialized in this process, else this machine.
    Raises ValueError naming the offending stage or edge."""
    stages = {spec.name: spec for spec in graph.stages}
    edges = graph.edges
    if not stages:
        raise ValueError(f"graph {graph.name!r} has no stages")
    for edge in edges:
        for end in (edge.src, edge.dst):
            if end not in stages:
                raise ValueError(f"edge '{edge}' names stage {end!r}, which graph {graph.name!r} does not have")

    down: dict[str, list[str]] = {name: [] for name in stages}
    up: dict[str, list[str]] = {name: [] for name in stages}
    for edge in edges:
        down[edge.src].append(edge.dst)
        up[edge.dst].append(edge.src)

    order = _topological_order(graph.name, list(stages), down, up)
    source, sink = _source_and_sink(list(stages), down, up)

    roles: dict[str, type[StageRole]] = {}
    for name in order:
        try:
            roles[name] = resolve_role(graph.role(name))
        except ValueError as exc:
            raise ValueError(f"stage {name!r}: {exc}") from None

    configs = {name: _stage_config(stages[name], roles[name]) for name in order}

    edge_schemas: dict[tuple[str, str], pa.Schema] = {}
    for edge in edges:
        edge_schemas[(edge.src, edge.dst)] = _edge_schema(edge, roles[edge.src], roles[edge.dst])

    if cluster is None:
        nodes = _cluster_nodes()
    elif isinstance(cluster, (list, tuple)) and all(isinstance(node, Mapping) for node in cluster):
        nodes = [dict(node) for node in cluster]
    else:
        raise ValueError(f"cluster must be a list of per-node resource dicts, got {cluster!r}")
    for name in order:
        _check_placeable(stages[name], nodes)

    return CompiledGraph(
        name=graph.name,
        stages=tuple(stages[name] for name in order),
        edges=edges,
        roles=roles,
        configs=configs,
        source=source,
        sink=sink,
        edge_schemas=edge_schemas,
    )


def _stage_config(spec: StageSpec, role: type[StageRole]) -> StageConfig:
    """The stage's options parsed for its role; ValueError naming the stage and the option."""
    config = parse_stage_config(spec.name, spec.options_dict, shards=spec.shards, extras=role.takes_extra_options)
    if role.requires_model and config.engine is None:
        raise ValueError(f"stage {spec.name!r}: {role.__qualname__} needs a 'model' option")
    return config


def _topological_order(graph: str, names: list[str], down: dict, up: dict) -> list[str]:
    """Kahn's algorithm, ties broken by insertion order. A cycle raises naming its stages."""
    index = {name: i for i, name in enumerate(names)}
    indegree = {name: len(up[name]) for name in names}
    ready = [index[name] for name in names if indegree[name] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(name)
        for dst in down[name]:
            indegree[dst] -= 1
            if indegree[dst] == 0:
                heapq.heappush(ready, index[dst])
    if len(order) < len(names):
        cycle = _find_cycle([n for n in names if indegree[n] > 0], down)
        raise ValueError(f"graph {graph!r} has a cycle: {' >> '.join(cycle + [cycle[0]])}")
    return order


def _find_cycle(left: list[str], down: dict) -> list[str]:
    """One cycle among the stages Kahn's algorithm left unordered. Each of them still has a
    predecessor that is unordered too, so walking predecessors must come back to a stage."""
    preds = {n: [m for m in left if n in down[m]] for n in left}
    path: list[str] = []
    seen: dict[str, int] = {}
    node = left[0]
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = preds[node][0]
    cycle = path[seen[node] :][::-1]  # walked against the edges: reverse
    start = min(range(len(cycle)), key=lambda i: left.index(cycle[i]))  # begin at the earliest-added stage
    return cycle[start:] + cycle[:start]


def _source_and_sink(names: list[str], down: dict, up: dict) -> tuple[str, str]:
    """The first stage with no incoming edge must reach every stage, and every stage must
    reach the last stage with no outgoing edge (so each is unique)."""
    sources = [n for n in names if not up[n]]
    sinks = [n for n in names if not down[n]]
    source, sink = sources[0], sinks[-1]  # an acyclic graph has at least one of each

    unreached = [n for n in names if n not in _reachable(source, down)]
    if unreached:
        extra = f" (stages with no incoming edge: {_quoted(sources)}; a graph has exactly one source)"
        raise ValueError(f"{_stages_word(unreached)} no path from the source {source!r}" + extra * (len(sources) > 1))
    stuck = [n for n in names if n not in _reachable(sink, up)]
    if stuck:
        extra = f" (stages with no outgoing edge: {_quoted(sinks)}; a graph has exactly one sink)"
        raise ValueError(f"{_stages_word(stuck)} no path to the sink {sink!r}" + extra * (len(sinks) > 1))
    return source, sink


def _stages_word(names: list[str]) -> str:
    return f"stage {names[0]!r} has" if len(names) == 1 else f"stages {_quoted(names)} have"


def _reachable(start: str, adjacent: dict) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for nxt in adjacent[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _edge_schema(edge: EdgeSpec, src_role: type, dst_role: type) -> pa.Schema:
    """The schema on `edge`: what src produces, which must equal what dst consumes."""
    produced = getattr(src_role, "produces", None)
    consumed = getattr(dst_role, "consumes", None)
    if produced is None:
        raise ValueError(f"edge '{edge}': stage {edge.src!r} ({src_role.__qualname__}) declares no `produces` schema")
    if consumed is None:
        raise ValueError(
            f"edge '{edge}': stage {edge.dst!r} ({dst_role.__qualname__}) consumes nothing (a source role), "
            f"but {edge.src!r} sends it {schema_name(produced)!r}"
        )
    if not produced.equals(consumed):
        raise ValueError(
            f"edge '{edge}': {edge.src!r} ({src_role.__qualname__}) produces {schema_name(produced)!r} but "
            f"{edge.dst!r} ({dst_role.__qualname__}) consumes {schema_name(consumed)!r}; "
            f"{_first_difference(produced, consumed)}"
        )
    return produced


def _first_difference(produced: pa.Schema, consumed: pa.Schema) -> str:
    for i, (a, b) in enumerate(zip(produced, consumed)):
        if not a.equals(b):
            return f"first difference at field {i}: produced {a.name!r} ({a.type}) vs consumed {b.name!r} ({b.type})"
    if len(produced) > len(consumed):
        extra = produced.field(len(consumed))
        return f"first difference at field {len(consumed)}: produced {extra.name!r} ({extra.type}) is not consumed"
    if len(consumed) > len(produced):
        missing = consumed.field(len(produced))
        return f"first difference at field {len(produced)}: consumed {missing.name!r} ({missing.type}) is not produced"
    return "the schemas differ in metadata"


def _cluster_nodes() -> list[dict[str, float]]:
    """The alive Ray nodes' resources when Ray is initialized here, else this machine's."""
    ray = sys.modules.get("ray")  # Ray cannot be initialized in a process that never imported it
    if ray is not None and ray.is_initialized():
        return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    return [{"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}]


def _check_placeable(spec: StageSpec, nodes: list[dict[str, float]]) -> None:
    """Some single node must hold one shard of one replica of `spec` (amounts are not summed
    over replicas or stages: that is the scheduler's business, not a static impossibility)."""
    need = spec.demand()
    if not need:
        return
    if not nodes:
        raise ValueError(f"stage {spec.name!r} needs {_amounts(need)} per shard, but the cluster has no nodes")
    if any(all(node.get(k, 0.0) + _EPS >= v for k, v in need.items()) for node in nodes):
        return
    for key, amount in need.items():
        most = max(node.get(key, 0.0) for node in nodes)
        if most + _EPS < amount:
            raise ValueError(
                f"stage {spec.name!r} needs {key}={_num(amount)} per shard, but no node has that much "
                f"(most on one node: {_num(most)})"
            )
    raise ValueError(
        f"stage {spec.name!r} needs {_amounts(need)} per shard on one node, "
        f"but no single node has all of them together"
    )


def _amounts(need: dict[str, float]) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in need.items())
