from tideflow.runtime.engine.core.sequence import SequenceStatus

from tests.runtime.helpers import EOS, fake_tokens, make_scheduler, make_seq, run_to_completion


def _all_free(sched):
    bm = sched.blocks
    return bm.num_free_blocks == bm.num_blocks and all(c == 0 for c in bm.ref_counts)


def test_every_sequence_finishes_with_max_tokens_and_no_block_leaks():
    sched = make_scheduler()
    seqs = [make_seq(range(1, 3 + 5 * i), max_tokens=3 + i, rid=str(i)) for i in range(6)]
    for s in seqs:
        sched.add(s)
    run_to_completion(sched)
    for i, s in enumerate(seqs):
        assert s.finished and s.finish_reason == "length" and s.num_output_tokens == 3 + i
    assert _all_free(sched)


def test_token_budget_and_chunked_prefill():
    sched = make_scheduler(budget=8)
    long = make_seq(range(1, 21), max_tokens=2, rid="long")  # 20 prompt tokens -> chunks of 8, 8, 4
    sched.add(long)
    chunks = []
    while not long.finished:
        batch = sched.schedule()
        assert batch.num_tokens <= 8
        chunks.append((batch.num_new_tokens[0], batch.sample[0]))
        sched.update(batch, fake_tokens(batch))
    assert chunks == [(8, False), (8, False), (4, True), (1, True)]
    assert _all_free(sched)


def test_without_chunking_a_prompt_waits_for_a_step_it_fits_whole():
    sched = make_scheduler(budget=16, chunked=False)
    a = make_seq(range(1, 11), max_tokens=4, rid="a")  # 10 tokens
    b = make_seq(range(20, 30), max_tokens=4, rid="b")  # 10 tokens: does not fit beside a
    sched.add(a)
    sched.add(b)
    first = sched.schedule()
    assert first.seqs == [a] and first.num_new_tokens == [10]
    sched.update(first, fake_tokens(first))
    second = sched.schedule()
    assert second.seqs == [a, b] and second.num_new_tokens == [1, 10]


def test_running_sequences_are_scheduled_before_waiting_ones_and_max_num_seqs_holds():
    sched = make_scheduler(max_num_seqs=2, budget=64)
    seqs = [make_seq([1, 2, 3], max_tokens=5, rid=str(i)) for i in range(3)]
    for s in seqs:
        sched.add(s)
    batch = sched.schedule()
    assert batch.seqs == seqs[:2]
    sched.update(batch, fake_tokens(batch))
    batch = sched.schedule()
    assert batch.seqs == seqs[:2] and batch.num_new_tokens == [1, 1]
    assert seqs[2].status is SequenceStatus.WAITING


def test_eos_and_stop_token_ids_and_min_tokens():
    sched = make_scheduler()
    eos = make_seq([1, 2], max_tokens=10, rid="eos")
    ignore = make_seq([1, 2], max_tokens=4, rid="ignore", ignore_eos=True)
    stop_id = make_seq([1, 2], max_tokens=10, rid="stopid", stop_token_ids=[5])
    late = make_seq([1, 2], max_tokens=10, rid="late", min_tokens=3)
    for s in (eos, ignore, stop_id, late):
        sched.add(s)
    pick = {"eos": EOS, "ignore": EOS, "stopid": 5, "late": EOS}
    run_to_completion(sched, token=lambda s: pick[s.request_id])
    assert (eos.finish_reason, eos.num_output_tokens) == ("stop", 1)
    assert (ignore.finish_reason, ignore.num_output_tokens) == ("length", 4)
    assert (stop_id.finish_reason, stop_id.stop_reason, stop_id.output_token_ids) == ("stop", 5, [5])
    assert (late.finish_reason, late.num_output_tokens) == ("stop", 3)
    assert _all_free(sched)


def test_context_length_ends_a_sequence():
    sched = make_scheduler(max_model_len=6)
    s = make_seq([1, 2, 3, 4], max_tokens=100)
    sched.add(s)
    run_to_completion(sched)
    assert s.finish_reason == "length" and s.num_tokens == 6


def test_abort_frees_blocks_for_running_and_waiting():
    sched = make_scheduler(max_num_seqs=1)
    a = make_seq(range(1, 10), max_tokens=50, rid="a")
    b = make_seq(range(1, 10), max_tokens=50, rid="b")
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    sched.update(batch, fake_tokens(batch))
    assert a.status is SequenceStatus.RUNNING and b.status is SequenceStatus.WAITING
    sched.abort([a, b])
    assert a.finish_reason == b.finish_reason == "abort"
    assert sched.num_unfinished == 0 and _all_free(sched)


def test_preemption_by_recompute_when_blocks_run_out():
    # 6 blocks of 4 slots; each sequence grows to 4 + 12 = 16 tokens = 4 blocks: two cannot coexist.
    sched = make_scheduler(num_blocks=6, block_size=4, prefix=False)
    a = make_seq([1, 2, 3, 4], max_tokens=12, rid="a")
    b = make_seq([5, 6, 7, 8], max_tokens=12, rid="b")
    sched.add(a)
    sched.add(b)
    steps = run_to_completion(sched, token=lambda s: 10 + s.num_output_tokens)
    assert any(batch.preempted for batch in steps)
    assert sched.num_preemptions >= 1 and b.num_preemptions >= 1 and a.num_preemptions == 0
    # recomputation keeps the tokens: both got 12 tokens counting up from 10
    assert a.output_token_ids == b.output_token_ids == list(range(10, 22))
    # after a preemption, the recompute step prefills prompt + generated tokens
    recompute = [bt for bt in steps if b in bt.seqs and bt.num_computed_tokens[bt.seqs.index(b)] == 0]
    assert len(recompute) == 1 + b.num_preemptions
    assert _all_free(sched)


def test_prefix_hits_are_counted_and_skip_computation():
    sched = make_scheduler(block_size=4)
    shared = list(range(1, 13))  # three full blocks
    a = make_seq(shared + [50], max_tokens=2, rid="a")
    sched.add(a)
    run_to_completion(sched)
    b = make_seq(shared + [60, 61], max_tokens=2, rid="b")
    sched.add(b)
    batch = sched.schedule()
    assert batch.num_computed_tokens == [12] and batch.num_new_tokens == [2]
    assert b.num_cached_tokens == 12
    assert sched.blocks.stats.hits == 12 and sched.blocks.stats.queries == 13 + 14
    sched.update(batch, fake_tokens(batch))
    run_to_completion(sched)
    assert _all_free(sched)
