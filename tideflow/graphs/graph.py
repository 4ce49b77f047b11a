"""A graph as plain data: named stages (`StageSpec`), the edges between them (`EdgeSpec`),
and `Graph`, the builder that collects them.

Building checks each stage on its own (names, counts, amounts); whether the whole graph
makes sense (actor classes exist, no cycles, schemas agree, the cluster can place every
stage) is `compile()`'s job, so a graph can be built, saved and loaded before any of its
actor classes is importable.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tideflow.actors.registry import role_key

if TYPE_CHECKING:
    from tideflow.runtime.dataflow.role import StageRole
    from tideflow.graphs.compile import CompiledGraph

DEFAULT_QUEUE_SIZE = 8  # bound of a downstream inbox, in batches


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"{kind} name must be a non-empty string without '/', got {name!r}")


def _amount(stage: str, field: str, value: Any) -> float:
    """A non-negative finite number as float; ValueError naming the stage and field otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"stage {stage!r}: {field} must be a number >= 0, got {value!r}")
    return float(value)


def _count(owner: str, field: str, value: Any) -> int:
    """An integer >= 1; ValueError naming the owner (stage or edge) and field otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {field} must be an integer >= 1, got {value!r}")
    return int(value)


def _pairs(stage: str, field: str, value: Any) -> tuple[tuple[str, Any], ...]:
    """A mapping (or iterable of pairs) as a tuple of (str key, value) sorted by key."""
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = [(k, v) for k, v in items]
    except (TypeError, ValueError):
        raise ValueError(f"stage {stage!r}: {field} must be a mapping, got {value!r}") from None
    keys = [k for k, _ in pairs]
    for k in keys:
        if not isinstance(k, str) or not k:
            raise ValueError(f"stage {stage!r}: {field} keys must be non-empty strings, got {k!r}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"stage {stage!r}: {field} repeats a key: {keys}")
    return tuple(sorted(pairs, key=lambda kv: kv[0]))


@dataclass(frozen=True)
class StageSpec:
    """One stage: which role runs it, what one replica needs, and how it scales.

    Dict-like fields are stored as key-sorted tuples so that a spec stays frozen and
    comparable (and hashable while option values are); read them through `resources_dict` /
    `options_dict`. A mapping passed for them is converted on construction. Invalid values
    raise ValueError naming the stage and the field.
    """

    name: str  # unique within the graph; no '/'
    actor: str  # role key as `role_key()` writes it: a registry key ("prefill") or "module:Class"
    num_cpus: float = 1.0  # CPUs per shard of one replica
    num_gpus: float = 0.0  # GPUs per shard of one replica (fractions share a device)
    resources: tuple[tuple[str, float], ...] = ()  # custom Ray resource -> amount per shard, sorted by name
    replicas: int = 1  # independent copies; the router spreads requests over them
    shards: int = 1  # actors that together hold one replica (tensor / expert parallel)
    # role option -> value (model, engine options ...), sorted by key; compile parses them into a
    # StageConfig (tideflow.runtime.dataflow.stage_config), which is what the role reads
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        _check_name("stage", self.name)
        if not isinstance(self.actor, str) or not self.actor:
            raise ValueError(f"stage {self.name!r}: actor must be a non-empty role key, got {self.actor!r}")
        set_ = object.__setattr__
        set_(self, "num_cpus", _amount(self.name, "num_cpus", self.num_cpus))
        set_(self, "num_gpus", _amount(self.name, "num_gpus", self.num_gpus))
        set_(self, "replicas", _count(f"stage {self.name!r}", "replicas", self.replicas))
        set_(self, "shards", _count(f"stage {self.name!r}", "shards", self.shards))
        resources = _pairs(self.name, "resources", self.resources)
        for key, _ in resources:
            if key in ("CPU", "GPU"):
                raise ValueError(f"stage {self.name!r}: resources: give {key} as num_{key.lower()}s, not as a resource")
        set_(self, "resources", tuple((k, _amount(self.name, f"resources[{k!r}]", v)) for k, v in resources))
        set_(self, "options", _pairs(self.name, "options", self.options))

    @property
    def resources_dict(self) -> dict[str, float]:
        return dict(self.resources)

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def demand(self) -> dict[str, float]:
        """What one shard of one replica asks of a single node: resource -> amount (zeros dropped)."""
        need = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources_dict}
        return {k: v for k, v in need.items() if v > 0}


@dataclass(frozen=True)
class EdgeSpec:
    """Batches flow from stage `src` to stage `dst`."""

    src: str  # upstream stage name
    dst: str  # downstream stage name
    queue_size: int = DEFAULT_QUEUE_SIZE  # bound of `dst`'s inbox for this edge, in batches; >= 1

    def __post_init__(self) -> None:
        _check_name("edge source stage", self.src)
        _check_name("edge destination stage", self.dst)
        object.__setattr__(self, "queue_size", _count(f"edge '{self}'", "queue_size", self.queue_size))

    def __str__(self) -> str:
        return f"{self.src} >> {self.dst}"


class StageRef:
    """A handle on a stage of a `Graph`, for wiring: `a >> b`, `a >> [b, c]`, `[a, b] >> c`.

    `>>` adds the edges (default queue size) and returns its right-hand side, so chains read
    left to right: `tok >> engine >> detok`.
    """

    __slots__ = ("graph", "name")

    def __init__(self, graph: Graph, name: str):
        self.graph = graph
        self.name = name

    @property
    def spec(self) -> StageSpec:
        return self.graph.spec(self.name)

    def __rshift__(self, other: StageRef | str | list | tuple):
        if isinstance(other, (list, tuple)):
            for dst in other:
                self.graph.connect(self, dst)
            return other
        self.graph.connect(self, other)
        return other

    def __rrshift__(self, other: list | tuple):
        # `[a, b] >> c`: Python asks the list first, which has no `>>`, then `c`.
        if not isinstance(other, (list, tuple)):
            return NotImplemented
        for src in other:
            self.graph.connect(src, self)
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StageRef) and other.graph is self.graph and other.name == self.name

    def __hash__(self) -> int:
        return hash((id(self.graph), self.name))

    def __repr__(self) -> str:
        return f"StageRef({self.graph.name!r}, {self.name!r})"


class Graph:
    """Builds a graph: `stage()` adds a named stage, `>>` / `connect()` add edges.

    Stage names are checked at once (a duplicate raises ValueError naming it); everything
    that needs the whole graph or the actor classes waits for `compile()`. `stages` and
    `edges` are the plain data; `to_yaml()` / `to_dict()` write it out.
    """

    def __init__(self, name: str):
        _check_name("graph", name)
        self.name = name
        self._stages: dict[str, StageSpec] = {}  # stage name -> spec, in insertion order
        self._edges: dict[tuple[str, str], EdgeSpec] = {}  # (src, dst) -> edge, in insertion order
        self._classes: dict[str, type] = {}  # stage name -> the class given to stage(), if one was

    # ---- building -------------------------------------------------------------------------

    def stage(
        self,
        name: str,
        actor_class: type[StageRole] | str,
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        resources: Mapping[str, float] | None = None,
        replicas: int = 1,
        shards: int = 1,
        options: Mapping[str, Any] | None = None,
    ) -> StageRef:
        """Add a stage. `actor_class` is a StageRole subclass, a registry key ("prefill") or
        "module:Class"; it is not imported here (compile resolves it and reports unknown ones)."""
        if isinstance(actor_class, type):
            actor = role_key(actor_class)
        elif isinstance(actor_class, str):
            actor = actor_class
        else:
            raise ValueError(
                f"stage {name!r}: actor_class must be a StageRole subclass or a role key, got {actor_class!r}"
            )
        spec = StageSpec(
            name=name,
            actor=actor,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            resources=resources or (),
            replicas=replicas,
            shards=shards,
            options=options or (),
        )
        ref = self.add_stage(spec)
        if isinstance(actor_class, type):
            self._classes[name] = actor_class  # works even when "module:Class" cannot be imported (a local class)
        return ref

    def add_stage(self, spec: StageSpec) -> StageRef:
        """Add a ready-made stage spec."""
        if spec.name in self._stages:
            raise ValueError(f"graph {self.name!r} already has a stage named {spec.name!r}")
        self._stages[spec.name] = spec
        return StageRef(self, spec.name)

    def connect(self, src: StageRef | str, dst: StageRef | str, queue_size: int = DEFAULT_QUEUE_SIZE) -> EdgeSpec:
        """Add the edge src -> dst. Stage names are checked by compile, not here."""
        edge = EdgeSpec(self._name_of(src), self._name_of(dst), queue_size)
        if (edge.src, edge.dst) in self._edges:
            raise ValueError(f"graph {self.name!r} already has the edge '{edge}'")
        self._edges[(edge.src, edge.dst)] = edge
        return edge

    def _name_of(self, ref: StageRef | str) -> str:
        if isinstance(ref, StageRef):
            if ref.graph is not self:
                raise ValueError(f"stage {ref.name!r} belongs to graph {ref.graph.name!r}, not {self.name!r}")
            return ref.name
        if isinstance(ref, str):
            return ref
        raise ValueError(f"an edge end must be a StageRef or a stage name, got {ref!r}")

    # ---- reading --------------------------------------------------------------------------

    @property
    def stages(self) -> tuple[StageSpec, ...]:
        """The stages in insertion order."""
        return tuple(self._stages.values())

    @property
    def edges(self) -> tuple[EdgeSpec, ...]:
        """The edges in insertion order."""
        return tuple(self._edges.values())

    def spec(self, name: str) -> StageSpec:
        try:
            return self._stages[name]
        except KeyError:
            raise KeyError(f"graph {self.name!r} has no stage {name!r}") from None

    def role(self, name: str) -> type | str:
        """What compile resolves for stage `name`: the class given to `stage()`, else the spec's role key."""
        return self._classes.get(name) or self.spec(name).actor

    def __getitem__(self, name: str) -> StageRef:
        """A handle on an existing stage (e.g. one loaded from YAML), for more wiring."""
        self.spec(name)
        return StageRef(self, name)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, stages={list(self._stages)}, edges={[str(e) for e in self._edges.values()]})"

    # ---- compiling and running ------------------------------------------------------------

    def compile(self, cluster: list[dict[str, float]] | None = None) -> CompiledGraph:
        """Validate the graph and resolve its roles; see `tideflow.graphs.compile.compile_graph`.
        `cluster` is a list of per-node resource dicts; None asks Ray (when initialized) or
        looks at this machine."""
        from tideflow.graphs.compile import compile_graph

        return compile_graph(self, cluster)

    def run(self, prompts, sampling_params=None, **kwargs):
        """Compile for this machine and run in-process (tests, notebooks)."""
        from tideflow.runtime.dataflow.inprocess import run_graph

        return run_graph(self.compile(), prompts, sampling_params, **kwargs)

    def deploy(self, address: str | None = None, **kwargs):
        """Start the graph on Ray. The graph itself (not a compiled one) goes to the executor,
        which connects to Ray at `address` first and then compiles against the live cluster's
        nodes, so the resource check sees the cluster the stages will actually run on.

        Keyword arguments (see `tideflow.runtime.dataflow.executor.deploy`): `inbox_size`; recovery,
        on by default: `checkpoint_dir` (local directory or pyarrow.fs URI; None: a temporary
        one), `checkpoint_interval` (seconds), `checkpoint_batches`, `max_restarts`, and
        `recovery=False` to turn it off; `request_log` (a directory) records finished requests
        for `tideflow replay`."""
        from tideflow.runtime.dataflow.executor import deploy

        return deploy(self, address=address, **kwargs)

    # ---- plain-data forms (tideflow.graphs.yaml_io) ---------------------------------------

    def to_dict(self) -> dict:
        from tideflow.graphs.yaml_io import graph_to_dict

        return graph_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Graph:
        from tideflow.graphs.yaml_io import graph_from_dict

        return graph_from_dict(data)

    def to_yaml(self) -> str:
        from tideflow.graphs.yaml_io import graph_to_yaml

        return graph_to_yaml(self)

    @classmethod
    def from_yaml(cls, text_or_path) -> Graph:
        """A graph from YAML text or from a path to a YAML file."""
        from tideflow.graphs.yaml_io import graph_from_yaml

        return graph_from_yaml(text_or_path)

