"""The Router: picks a downstream replica for each row.

Policies, chosen by the downstream role's `routing`:
- `least_loaded`: the replica with the fewest requests held (its last reported load plus
  what was sent to it since);
- `prefix`: a replica that already holds the longest cached prefix of the prompt, unless
  it is much busier than the least loaded one; otherwise least loaded. Prefixes are
  tracked as chained block hashes, the same ones the KV block manager publishes;
- `sticky`: a stable hash of the request id, so every row of a request reaches the same
  (stateful) replica;
- `image`: a stable hash of the row's first image (the request id when it has none), so a
  repeated image reaches the encoder replica that cached its features.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from tideflow.runtime.engine.core.block_manager import block_hash

POLICIES = ("least_loaded", "prefix", "sticky", "image")


class Router:
    def __init__(
        self,
        num_replicas: int,
        policy: str = "least_loaded",
        *,
        block_size: int = 16,
        max_prefix_blocks: int = 16,
        max_tracked: int = 65536,
        imbalance: int = 8,
    ):
        if policy not in POLICIES:
            raise ValueError(f"routing policy must be one of {POLICIES}, got {policy!r}")
        if num_replicas < 1:
            raise ValueError("a router needs at least one replica")
        self.num_replicas = num_replicas
        self.policy = policy
        self.block_size = block_size
        self.max_prefix_blocks = max_prefix_blocks
        self.max_tracked = max_tracked
        self.imbalance = imbalance  # extra load accepted to follow a cached prefix
        self.loads = [0] * num_replicas  # replica -> estimated requests held
        self.prefix_owner: OrderedDict[bytes, int] = OrderedDict()  # block hash -> replica (LRU)
        self.prefix_hits = 0
        self.dead: set[int] = set()  # replicas found dead: never picked while another lives

    def observe_load(self, replica: int, load: int) -> None:
        """The replica reported how many requests it holds."""
        self.loads[replica] = load

    def mark_dead(self, replica: int) -> None:
        self.dead.add(replica)

    def revive(self, replica: int) -> None:
        """A replica found dead is serving again (restarted): it may be picked again. Its load
        estimate starts from nothing (the last one is stale, and only a push to it corrects
        it: a high one would keep it from ever being picked)."""
        self.dead.discard(replica)
        self.loads[replica] = 0

    def _alive(self) -> list[int]:
        alive = [r for r in range(self.num_replicas) if r not in self.dead]
        return alive or list(range(self.num_replicas))

    def pick(self, row: dict) -> int:
        """The replica for one row given as a dict (the columns the policy reads)."""
        if self.num_replicas == 1:
            return 0
        if self.policy == "sticky":
            return self._by_hash(row["request_id"].encode())
        if self.policy == "image":
            images = row.get("images")
            return self._by_hash(images[0] if images else row["request_id"].encode())
        return self._by_load(row.get("prompt_token_ids") or [])

    def split(self, batch: pa.RecordBatch) -> dict[int, pa.RecordBatch]:
        """The batch's rows grouped by the replica each is sent to (single replica: unchanged).
        Reads only the column the policy needs, straight from its Arrow buffers."""
        if self.num_replicas == 1:
            return {0: batch}
        picks = np.fromiter(self._picks(batch), dtype=np.int64, count=batch.num_rows)
        return {int(r): batch.take(pa.array(np.flatnonzero(picks == r))) for r in np.unique(picks)}

    def _picks(self, batch: pa.RecordBatch):
        names = batch.schema.names
        no_images = "images" not in names or not pa.types.is_list(batch.schema.field("images").type)
        if self.policy == "sticky" or (self.policy == "image" and no_images):
            for rid in batch.column("request_id").to_pylist():
                yield self._by_hash(rid.encode())
        elif self.policy == "image":
            ids = batch.column("request_id")
            for i, first in enumerate(_first_values(batch.column("images"))):
                yield self._by_hash(first if first is not None else ids[i].as_py().encode())
        elif self.policy == "prefix" and "prompt_token_ids" in names and pa.types.is_list(batch.schema.field("prompt_token_ids").type):
            for ids in _list_values(batch.column("prompt_token_ids")):
                yield self._by_load(ids)
        else:
            for _ in range(batch.num_rows):
                yield self._by_load(())

    def _by_hash(self, key: bytes) -> int:
        alive = self._alive()
        return alive[zlib.crc32(key) % len(alive)]

    def _by_load(self, token_ids) -> int:
        replica = self._by_prefix(token_ids) if self.policy == "prefix" else self._least_loaded()
        self.loads[replica] += 1
        return replica

    def _least_loaded(self) -> int:
        return min(self._alive(), key=self.loads.__getitem__)

    def _by_prefix(self, token_ids) -> int:
        bs = self.block_size
        hashes, parent = [], b""
        for i in range(min(len(token_ids) // bs, self.max_prefix_blocks)):
            parent = block_hash(parent, _as_list(token_ids[i * bs : (i + 1) * bs]))
            hashes.append(parent)
        least = self._least_loaded()
        choice = least
        for h in reversed(hashes):  # longest cached prefix first
            owner = self.prefix_owner.get(h)
            if owner is not None and owner not in self.dead:
                if self.loads[owner] <= self.loads[least] + self.imbalance:
                    choice = owner
                    self.prefix_hits += 1
                break
        for h in hashes:
            self.prefix_owner[h] = choice
            self.prefix_owner.move_to_end(h)
        while len(self.prefix_owner) > self.max_tracked:
            self.prefix_owner.popitem(last=False)
        return choice


def _as_list(ids) -> list[int]:
    return ids.tolist() if isinstance(ids, np.ndarray) else list(ids)


def _list_values(column: pa.Array):
    """Each row of a `list<int>` column as a numpy view of its values (empty for null)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    for i in range(len(column)):
        yield values[offsets[i] : offsets[i + 1]] if valid[i] else values[:0]


def _first_values(column: pa.Array):
    """Each row's first element of a `list<binary>` column as bytes (None: null or empty)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    values = column.values
    for i in range(len(column)):
        yield values[int(offsets[i])].as_py() if valid[i] and offsets[i + 1] > offsets[i] else None
