"""Who a stage replica talks to: the record the executor builds for each replica."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Wiring:
    """Who a replica talks to; decided by the executor at deploy time and again at each rescale.
    The checkpoint coordinator keeps a copy, which a restarted replica fetches."""

    downstream: dict  # stage -> [actor handle per replica]
    routing: dict  # stage -> routing policy of its role
    upstream: dict  # stage -> [actor handle per replica] (aborts go there), or {replica index -> handle} after a rescale
    sink: object | None  # the collector, when this stage is the graph's sink
    collector: object = None  # the collector: told of requests that cannot go on (a dead replica downstream)
    block_size: int = 16  # KV block size: the prefix router hashes whole blocks
    replica_ids: dict | None = None  # stage -> [replica index of each handle in `downstream`]; None: 0, 1, 2 ...
    # downstream stages whose requests migrate when a replica dies (docs/reliability.md fault 10):
    # pushes to them are not retried by Ray; one that finds its replica dead goes to a live one
    migrating: frozenset = frozenset()

    def replica_id(self, stage: str, position: int) -> int:
        """The replica index of the handle at `position` in `downstream[stage]`."""
        return position if self.replica_ids is None else self.replica_ids[stage][position]

    def senders(self) -> set[str]:
        """"stage/replica" of every upstream replica: the names its pushes here carry."""
        return {f"{stage}/{i}" for stage, handles in self.upstream.items() for i in _indices(handles)}


def _indices(handles) -> list[int]:
    """Replica indices of a stage's handles (a list, or a dict index -> handle after a rescale)."""
    return list(handles) if isinstance(handles, dict) else list(range(len(handles)))
