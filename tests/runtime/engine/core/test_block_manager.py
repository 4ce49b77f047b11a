from tideflow.runtime.engine.core.block_manager import RELEASED, BlockManager, block_hash

from tests.runtime.helpers import make_seq


def test_allocate_grows_block_table_and_free_returns_everything():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(range(1, 10))  # 9 tokens -> 3 blocks
    assert bm.allocate(seq, 9)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    seq.num_computed_tokens = 9
    assert bm.allocate(seq, 3)  # 12 tokens fit in the same 3 blocks
    assert len(seq.block_table) == 3
    assert bm.allocate(seq, 4)  # 13 tokens need a 4th
    assert len(seq.block_table) == 4
    bm.free(seq)
    assert seq.block_table == [] and bm.num_free_blocks == 8 and bm.usage == 0.0


def test_allocate_fails_without_side_effects_when_pool_is_short():
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = make_seq(range(1, 10))
    assert not bm.allocate(seq, 9)
    assert seq.block_table == [] and bm.num_free_blocks == 2


def test_hashes_chain_from_the_parent():
    a = block_hash(b"", [1, 2, 3, 4])
    assert block_hash(b"", [1, 2, 3, 4]) == a
    assert block_hash(a, [5, 6, 7, 8]) != block_hash(b"", [5, 6, 7, 8])
    assert block_hash(b"", [1, 2, 3, 5]) != a


def _compute(bm, seq, n):
    assert bm.allocate(seq, n)
    seq.num_computed_tokens += n
    bm.publish_full_blocks(seq)


def test_prefix_hit_shares_blocks_and_counts_references():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], rid="a")
    _compute(bm, a, 10)
    b = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 99, 98], rid="b")
    hits = bm.match_prefix(b)
    assert hits == a.block_table[:2]
    assert bm.allocate(b, 2, hits)
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert [bm.ref_counts[x] for x in a.block_table] == [2, 2, 1]
    bm.free(a)
    assert [bm.ref_counts[x] for x in b.block_table] == [1, 1, 1]
    bm.free(b)
    assert bm.num_free_blocks == 16


def test_a_fully_cached_prompt_still_computes_its_last_token():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(range(1, 9), rid="a")  # exactly two full blocks
    _compute(bm, a, 8)
    bm.free(a)
    b = make_seq(range(1, 9), rid="b")
    assert len(bm.match_prefix(b)) == 1  # the second block holds the last token: recomputed


def test_free_cached_blocks_are_revived_then_evicted_in_lru_order():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq([1, 2, 3, 4, 5], rid="a")
    _compute(bm, a, 5)  # blocks [1,2] [3,4] are full and published; [5] is partial
    assert a.block_table == [0, 1, 2]
    bm.free(a)
    assert list(bm.free_queue) == [3, 2, 1, 0]  # never-used first, then a's tail before its head
    assert set(bm.cached.values()) == {0, 1}

    b = make_seq([1, 2, 3, 4, 9], rid="b")
    hits = bm.match_prefix(b)
    assert hits == [0, 1]
    assert bm.allocate(b, 1, hits)
    assert b.block_table == [0, 1, 3] and list(bm.free_queue) == [2]
    bm.record_admission(b, 4)
    assert (bm.stats.queries, bm.stats.hits) == (5, 4)
    bm.free(b)
    assert list(bm.free_queue) == [2, 3, 1, 0]

    c = make_seq([7] * 7, rid="c")
    assert bm.match_prefix(c) == []
    assert bm.allocate(c, 6)  # three blocks: 2 and 3 (unpublished), then 1, whose hash is evicted
    assert c.block_table == [2, 3, 1]
    assert set(bm.cached.values()) == {0} and bm.hashes[1] is None
    assert bm.match_prefix(make_seq([1, 2, 3, 4, 9], rid="d")) == [0]


def test_prefix_caching_off_never_matches():
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    a = make_seq([1, 2, 3, 4, 5], rid="a")
    _compute(bm, a, 5)
    bm.free(a)
    assert bm.match_prefix(make_seq([1, 2, 3, 4, 5], rid="b")) == [] and not bm.cached


def test_sliding_window_releases_blocks_behind_the_window_and_keeps_them_cached():
    bm = BlockManager(num_blocks=8, block_size=4, sliding_window=6)
    seq = make_seq(range(1, 20))
    _compute(bm, seq, 13)  # the next token (position 13) sees keys 8..13: blocks 0 and 1 are behind
    bm.release_outside_window(seq)
    assert seq.block_table[:2] == [RELEASED, RELEASED] and seq.num_released_blocks == 2
    assert bm.num_free_blocks == 8 - 2
    bm.release_outside_window(seq)  # idempotent
    assert bm.num_free_blocks == 6
    other = make_seq(range(1, 20))
    assert len(bm.match_prefix(other)) == 3  # released full blocks stay in the prefix cache
    bm.free(seq)
    assert seq.block_table == [] and seq.num_released_blocks == 0 and bm.num_free_blocks == 8


def test_no_window_releases_nothing():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(range(1, 20))
    _compute(bm, seq, 16)
    bm.release_outside_window(seq)
    assert RELEASED not in seq.block_table and bm.num_free_blocks == 4
