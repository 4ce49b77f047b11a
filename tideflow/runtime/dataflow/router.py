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

    def _alive(self) -> list[int]:
        alive = [r for r in range(self.num_replicas) if r not in self.dead]
        return alive or list(range(self.num_replicas))

    def pick(self, row: dict) -> int:
        if self.num_replicas == 1:
            return 0
        if self.policy == "sticky":
            alive = self._alive()
            return alive[zlib.crc32(row["request_id"].encode()) % len(alive)]
        if self.policy == "image":
            alive = self._alive()
            images = row.get("images")
            key = images[0] if images else row["request_id"].encode()
            return alive[zlib.crc32(key) % len(alive)]
        if self.policy == "prefix":
            replica = self._by_prefix(row.get("prompt_token_ids") or [])
        else:
            replica = self._least_loaded()
        self.loads[replica] += 1
        return replica

    def split(self, batch: pa.RecordBatch) -> dict[int, pa.RecordBatch]:
        """The batch's rows grouped by the replica each is sent to (single replica: unchanged)."""
        if self.num_replicas == 1:
            return {0: batch}
        picks = np.array([self.pick(row) for row in batch.to_pylist()])
        return {int(r): batch.take(pa.array(np.flatnonzero(picks == r))) for r in np.unique(picks)}

    def _least_loaded(self) -> int:
        return min(self._alive(), key=self.loads.__getitem__)

    def _by_prefix(self, token_ids: list[int]) -> int:
        bs = self.block_size
        hashes, parent = [], b""
        for i in range(min(len(token_ids) // bs, self.max_prefix_blocks)):
            parent = block_hash(parent, token_ids[i * bs : (i + 1) * bs])
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
