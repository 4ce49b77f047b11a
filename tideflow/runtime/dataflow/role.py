"""What every stage role implements, and the registry that names them.

A role is plain Python: it runs the same in-process (`Graph.run`) and inside a Ray actor
(`Graph.deploy`), where `tideflow.runtime.dataflow.stage_host` hosts it. It declares the Arrow schema it
consumes and the one it produces; the graph compiler checks that the two ends of every edge
agree.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from tideflow.runtime.dataflow.stage_config import StageConfig


@dataclass(frozen=True)
class StageContext:
    """Where a role instance runs."""

    graph: str  # graph name
    stage: str  # stage name
    replica: int = 0  # replica index within the stage
    config: StageConfig = field(default_factory=StageConfig)  # the stage's options, parsed by compile_graph


@dataclass(slots=True)
class Emission:
    """One output batch of a role, with the large payloads that ride beside it."""

    batch: pa.RecordBatch
    attachments: dict[str, Any] | None = None  # row key -> payload (e.g. KV arrays); never in Arrow columns
    route_key: str = "request_id"  # column the router reads to pick a downstream replica


@dataclass(slots=True)
class AbortUpstream:
    """A role asks the replica that produced some rows to stop these completions
    (a stop string found downstream of the engine that generates the tokens)."""

    producer: int  # replica index of the upstream stage
    targets: list[tuple[str, int | None]]  # (request_id, completion index or None for all)


class StageRole(ABC):
    """A stage's behaviour. `push` accepts input without blocking on model work; `poll` does
    one unit of work (an engine step, a tokenization pass) and returns what it produced."""

    consumes: ClassVar[pa.Schema | None] = None  # None: a source stage (fed by the graph's ingress)
    produces: ClassVar[pa.Schema]
    needs_model: ClassVar[bool] = False  # holds model weights (placement may give it GPUs)
    routing: ClassVar[str] = "least_loaded"  # how upstream picks a replica: least_loaded | prefix | sticky
    requires_model: ClassVar[bool] = False  # reads `config.model` (weights or just the tokenizer): compile needs `model`
    # True: options no part of StageConfig knows reach the role as `config.extra` (custom
    # roles); False (the built-in roles): such an option fails compile
    takes_extra_options: ClassVar[bool] = True
    # True: when a replica dies, the requests it held move at once to a live replica of the stage
    # (request migration, docs/reliability.md fault 10). Such a role implements `held`, takes
    # `consumes` rows whose `resume` column says how far each completion got, and `disown`s
    # what moved away while it was down
    migratable: ClassVar[bool] = False

    def __init__(self, context: StageContext):
        self.context = context

    @abstractmethod
    def push(self, batch: pa.RecordBatch, attachments: dict[str, Any] | None = None) -> None:
        """Accept one input batch. Mutates only this role's queues."""

    @abstractmethod
    def poll(self) -> list[Emission | AbortUpstream]:
        """Do one unit of work; return the batches produced (possibly none) and any requests
        to abort upstream."""

    def has_work(self) -> bool:
        """Whether `poll` would make progress now."""
        return False

    def load(self) -> int:
        """Requests held (queued or running): the router's measure of load."""
        return 0

    def accepting(self) -> bool:
        """Whether the role takes more input now. While it says no, input waits in the
        stage's bounded inbox and, once that is full, producers block: backpressure."""
        return True

    def abort(self, targets: list[tuple[str, int | None]]) -> None:
        """Drop these completions ((request_id, index), index None = all) and free what they hold."""

    @classmethod
    def held(cls, snapshot: dict | None, logged: list[pa.RecordBatch]) -> list[dict]:
        """What a replica of this role held when it died, from its last checkpoint's
        `snapshot` (None: none yet) and the input batches it logged since: one `consumes` row
        (a dict) per unit that can move, with `index` when the unit is one completion, and a
        `resume` entry per completion whose sampling seed is known. What it leaves out stays
        with the replica, which restores it after its restart. Reads only its arguments."""
        raise NotImplementedError(f"{cls.__qualname__} is not migratable")

    def disown(self, targets: list[tuple[str, int | None]]) -> None:
        """These completions ((request_id, index), index None = all) moved to a live replica
        while this one was down: drop them wherever they are here (restored, queued, or still
        to come from the replayed log) and free what they hold."""
        self.abort(targets)

    def stats(self) -> dict:
        return {}

    def snapshot(self) -> dict:
        """The role's state as plain data (msgpack-able): what `restore` needs to continue
        from this point. Taken between steps, on a checkpoint barrier. Mutates nothing."""
        return {}

    def restore(self, state: dict) -> None:
        """Continue from a `snapshot` of a role of the same class (on a fresh instance, after
        a crash). Inputs that arrive again afterwards (replayed from the log) must be
        recognised and dropped if the state already holds them."""

    def close(self) -> None:
        """Release resources; called once at shutdown."""


def role_target(role_cls: type[StageRole]) -> str:
    """"module:Class" of a role class: what a stage actor is given, so that it imports the
    role (torch, transformers for model roles) in its own process and can time that."""
    return f"{role_cls.__module__}:{role_cls.__qualname__}"


def import_role(target: str | type[StageRole]) -> type[StageRole]:
    """The role class that `role_target` named (a class is taken as it is)."""
    if isinstance(target, type):
        if not issubclass(target, StageRole):
            raise TypeError(f"{target.__qualname__} is not a StageRole")
        return target
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, StageRole)):
        raise TypeError(f"{target} is not a StageRole")
    return cls
