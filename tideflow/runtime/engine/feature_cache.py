"""An LRU cache of image features keyed by image content hash, with hit counts.

Torch-free: values are whatever the encoder produces (numpy arrays in the Encoder role).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class FeatureCacheStats:
    hits: int = 0  # lookups answered from the cache
    misses: int = 0  # lookups that had to encode
    evictions: int = 0  # entries dropped to stay within capacity


class FeatureCache:
    """At most `capacity` entries; a hit makes an entry the most recently used."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"encoder cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.entries: OrderedDict[bytes, Any] = OrderedDict()  # image hash -> features, LRU first
        self.stats = FeatureCacheStats()

    def get(self, key: bytes) -> Any | None:
        """The cached features of `key` (a hit), or None (a miss)."""
        value = self.entries.get(key)
        if value is None:
            self.stats.misses += 1
            return None
        self.entries.move_to_end(key)
        self.stats.hits += 1
        return value

    def lookup(self, keys: list[bytes]) -> tuple[dict[bytes, Any], list[bytes]]:
        """Look up a batch of keys: (cached key -> value, keys to compute, each once). Counted
        per key occurrence: a repeat of a key already being computed for this batch is a hit."""
        found: dict[bytes, Any] = {}
        missing: dict[bytes, None] = {}
        for key in keys:
            if key in found or key in missing:
                self.stats.hits += 1
                continue
            value = self.get(key)
            if value is None:
                missing[key] = None
            else:
                found[key] = value
        return found, list(missing)

    def put(self, key: bytes, value: Any) -> None:
        if self.capacity == 0:
            return
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
            self.stats.evictions += 1

    def __len__(self) -> int:
        return len(self.entries)
