"""Paged KV block manager: block tables, reference counts, prefix caching, LRU eviction.

Torch-free bookkeeping only; the tensors live in the model runner. A block is a fixed number
of token slots. A sequence's `block_table` maps its logical blocks to physical ones.

Prefix caching: once a block is full and computed, it is published under a hash of its
tokens chained from the parent block's hash, so equal prefixes share physical blocks. A
block that holds image tokens hashes the images' content hashes too: two prompts with the
same tokens but different images share no block from the first image on. Freed
blocks keep their hash and content until they are reused: the free queue is in eviction
order (least recently freed first; a sequence's tail blocks before its head blocks), and a
hit on a free cached block takes it back out of the queue.

Sliding window: when every layer of the model attends only to the last `sliding_window`
tokens, blocks that fall wholly before the window of a sequence's next token are given back
as the sequence advances; their table entries become `RELEASED`.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from tideflow.runtime.engine.core.sequence import Sequence


RELEASED = -1  # block table entry of a block given back because it left the sliding window


def block_hash(parent: bytes, token_ids, extra: bytes = b"") -> bytes:
    """Hash of one full block: its parent's hash followed by its token ids, and `extra`, what
    else its content depends on (the hashes of the images whose tokens it holds)."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(array("q", token_ids).tobytes())
    if extra:
        h.update(extra)
    return h.digest()


@dataclass(slots=True)
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up at admission
    hits: int = 0  # of those, tokens served from cached blocks


class BlockManager:
    """Allocates KV blocks to sequences. Mutates `seq.block_table`, `seq.block_hashes` and
    `seq.num_registered_blocks`; never touches token ids or progress counters."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, sliding_window: int = 0):
        """`sliding_window` > 0: every layer attends to that many tokens at most (0: full attention)."""
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        if sliding_window < 0:
            raise ValueError(f"sliding_window must be >= 0, got {sliding_window}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.sliding_window = sliding_window
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks  # block id -> sequences using it
        self.hashes: list[bytes | None] = [None] * num_blocks  # block id -> published hash
        self.cached: dict[bytes, int] = {}  # hash -> block id
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # eviction order
        self.stats = PrefixCacheStats()

    # -- queries ----------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live sequences (free cached blocks count as free)."""
        return 1.0 - len(self.free_queue) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache -------------------------------------------------------------------------
    def _hash_full_blocks(self, seq: Sequence, num_blocks: int) -> None:
        """Extend seq.block_hashes to cover its first `num_blocks` full blocks."""
        bs = self.block_size
        hashes = seq.block_hashes
        parent = hashes[-1] if hashes else b""
        images = seq.images
        for i in range(len(hashes), num_blocks):
            extra = images.block_key(i * bs, (i + 1) * bs) if images is not None else b""
            parent = block_hash(parent, seq.token_ids[i * bs : (i + 1) * bs], extra)
            hashes.append(parent)

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding the longest prefix of `seq`, leaving at least one token to compute
        (its logits are needed). Takes no references; pass the result to `allocate`."""
        if not self.enable_prefix_caching:
            return []
        max_blocks = (seq.num_tokens - 1) // self.block_size
        self._hash_full_blocks(seq, max_blocks)
        hits = []
        for h in seq.block_hashes[:max_blocks]:
            block = self.cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    # -- allocation ---------------------------------------------------------------------------
    def allocate(self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] = ()) -> bool:
        """Grow seq's block table to hold its computed tokens plus `num_new_tokens`, taking
        `cached_blocks` (from `match_prefix`, only on admission) first. Returns False and
        changes nothing when the free pool is too small."""
        target = self.blocks_needed(seq.num_computed_tokens + len(cached_blocks) * self.block_size + num_new_tokens)
        num_new_blocks = target - len(seq.block_table) - len(cached_blocks)
        revived = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)  # leave the free queue
        if max(num_new_blocks, 0) + revived > len(self.free_queue):
            return False
        for b in cached_blocks:
            if self.ref_counts[b] == 0:
                del self.free_queue[b]
            self.ref_counts[b] += 1
            seq.block_table.append(b)
        if cached_blocks:
            seq.num_registered_blocks = len(seq.block_table)
        for _ in range(num_new_blocks):
            seq.block_table.append(self._pop_free())
        return True

    def _pop_free(self) -> int:
        block, _ = self.free_queue.popitem(last=False)
        old = self.hashes[block]
        if old is not None:  # evict its cached content
            if self.cached.get(old) == block:
                del self.cached[old]
            self.hashes[block] = None
        self.ref_counts[block] = 1
        return block

    def record_admission(self, seq: Sequence, num_cached_tokens: int) -> None:
        self.stats.queries += seq.num_tokens
        self.stats.hits += num_cached_tokens

    def publish_full_blocks(self, seq: Sequence) -> None:
        """Publish the blocks of `seq` that are now full and computed under their prefix hash."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        if num_full <= seq.num_registered_blocks:
            return
        self._hash_full_blocks(seq, num_full)
        for i in range(seq.num_registered_blocks, num_full):
            h, block = seq.block_hashes[i], seq.block_table[i]
            if h not in self.cached:  # a block with equal content may already be published
                self.cached[h] = block
                self.hashes[block] = h
        seq.num_registered_blocks = num_full

    def release_outside_window(self, seq: Sequence) -> None:
        """Give back the blocks that the sequence's next token can no longer attend to: it sits at
        position num_computed_tokens and sees keys from num_computed_tokens - window + 1 on.
        Call after `publish_full_blocks`, so released blocks stay findable in the prefix cache."""
        if not self.sliding_window:
            return
        first_needed = seq.num_computed_tokens - self.sliding_window + 1
        upto = min(max(first_needed, 0) // self.block_size, len(seq.block_table))
        for i in range(seq.num_released_blocks, upto):
            self._unref(seq.block_table[i])
            seq.block_table[i] = RELEASED
        seq.num_released_blocks = max(seq.num_released_blocks, upto)

    def free(self, seq: Sequence) -> None:
        """Release all of seq's blocks (finish, abort or preemption). Blocks whose count drops to
        zero join the free queue, tail blocks first so that they are evicted first."""
        for block in reversed(seq.block_table):
            if block != RELEASED:
                self._unref(block)
        seq.block_table.clear()
        seq.num_registered_blocks = 0
        seq.num_released_blocks = 0

    def _unref(self, block: int) -> None:
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self.free_queue[block] = None

    def reset_prefix_cache(self) -> None:
        """Forget every published block that no sequence holds."""
        for h, block in list(self.cached.items()):
            if self.ref_counts[block] == 0:
                del self.cached[h]
                self.hashes[block] = None
