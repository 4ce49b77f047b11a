import statistics

import pytest

from tideflow.bench.workloads import FIRST_ID, TraceRequest, mixed_trace, shared_prefix_trace, trace_stats


def test_mixed_trace_is_deterministic_for_a_seed():
    a = mixed_trace(50, seed=3, vocab_size=512)
    assert a == mixed_trace(50, seed=3, vocab_size=512)
    assert a != mixed_trace(50, seed=4, vocab_size=512)
    assert all(isinstance(r, TraceRequest) for r in a)


def test_mixed_trace_respects_the_ranges():
    trace = mixed_trace(500, seed=0, vocab_size=300, min_prompt=20, max_prompt=400, min_output=10, max_output=100)
    assert len(trace) == 500
    for r in trace:
        assert 20 <= len(r.prompt_token_ids) <= 400
        assert 10 <= r.max_tokens <= 100
        assert FIRST_ID <= min(r.prompt_token_ids) and max(r.prompt_token_ids) < 300
    # the clip limits are reached at both ends of a long-tailed draw
    assert max(len(r.prompt_token_ids) for r in trace) == 400
    assert min(r.max_tokens for r in trace) == 10


def test_mixed_trace_is_long_tailed():
    trace = mixed_trace(2000, seed=0, vocab_size=512)
    prompts = [len(r.prompt_token_ids) for r in trace]
    outputs = [r.max_tokens for r in trace]
    assert statistics.median(prompts) < 0.8 * statistics.fmean(prompts)
    assert statistics.median(outputs) < 0.8 * statistics.fmean(outputs)
    assert max(prompts) > 4 * statistics.median(prompts)


def test_trace_request_is_frozen():
    r = TraceRequest([5, 6], 3)
    with pytest.raises(AttributeError):
        r.max_tokens = 4


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="vocab_size"):
        mixed_trace(3, vocab_size=5)
    with pytest.raises(ValueError, match="prompt"):
        mixed_trace(3, vocab_size=512, min_prompt=10, max_prompt=5)
    with pytest.raises(ValueError, match="output"):
        mixed_trace(3, vocab_size=512, min_output=0)


def test_shared_prefix_trace():
    trace = shared_prefix_trace(20, seed=1, vocab_size=512, prefix_len=64, min_suffix=4, max_suffix=8, max_output=16)
    assert trace == shared_prefix_trace(20, seed=1, vocab_size=512, prefix_len=64, min_suffix=4, max_suffix=8, max_output=16)
    prefix = trace[0].prompt_token_ids[:64]
    for r in trace:
        assert r.prompt_token_ids[:64] == prefix
        assert 68 <= len(r.prompt_token_ids) <= 72
        assert 8 <= r.max_tokens <= 16
    assert len({tuple(r.prompt_token_ids[64:]) for r in trace}) > 1


def test_trace_stats():
    trace = [TraceRequest([5] * 10, 4), TraceRequest([6] * 30, 8)]
    stats = trace_stats(trace)
    assert stats["num_requests"] == 2
    assert stats["prompt_tokens"] == 40 and stats["output_tokens"] == 12
    assert stats["prompt_len_median"] == 20 and stats["output_len_max"] == 8


def test_narrow_ranges_still_vary():
    trace = mixed_trace(50, seed=0, vocab_size=512, max_prompt=32, min_output=2, max_output=8)
    assert len({len(r.prompt_token_ids) for r in trace}) > 5
    assert len({r.max_tokens for r in trace}) > 3
    fixed = mixed_trace(5, seed=0, vocab_size=512, min_prompt=7, max_prompt=7, min_output=3, max_output=3)
    assert {(len(r.prompt_token_ids), r.max_tokens) for r in fixed} == {(7, 3)}
