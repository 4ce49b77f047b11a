import math
from collections import Counter

import pytest
import torch

from tideflow.kernels.sampling import to_int64
from tideflow.runtime.engine.sampler import Sampler, apply_penalties, derive_seed
from tideflow.runtime.engine.core.sequence import Sequence
from tideflow.sampling_params import SamplingParams

from tests.runtime.helpers import reference_allowed

VOCAB = 64
EOS = 3


def make_seq(params=None, prompt=(1, 2), output=(), index=0, request_id="r"):
    params = params or SamplingParams(temperature=0.0)
    prompt, output = list(prompt), list(output)
    return Sequence(request_id, index, prompt + output, len(prompt), params, max_tokens=100)


def make_sampler(seed=0, vocab=VOCAB):
    return Sampler(vocab, [EOS], seed=seed)


def step_logits(step, vocab=VOCAB, dtype=torch.float32):
    """A fixed, step-dependent distribution (same for every caller)."""
    g = torch.Generator().manual_seed(1000 + step)
    return (torch.randn(vocab, generator=g, dtype=torch.float64) * 2).to(dtype)


def test_greedy_is_argmax_and_ignores_extra_columns():
    sampler = make_sampler()
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        logits = torch.randn(8, VOCAB + 5, dtype=torch.float64).to(dtype)
        logits[:, VOCAB:] = 100.0  # padding columns beyond the vocab must never be picked
        before = logits.clone()
        out = sampler(logits, [make_seq() for _ in range(8)])
        assert out.token_ids == logits[:, :VOCAB].argmax(-1).tolist()
        assert out.logprobs == [None] * 8
        assert torch.equal(logits, before)


def test_general_path_does_not_mutate_logits():
    sampler = make_sampler()
    logits = torch.randn(3, VOCAB)
    before = logits.clone()
    seqs = [
        make_seq(SamplingParams(temperature=0.0, repetition_penalty=1.5, min_tokens=2)),
        make_seq(SamplingParams(temperature=0.7, top_p=0.5, presence_penalty=1.0, logprobs=2)),
        make_seq(SamplingParams(temperature=1.0, top_k=3, min_p=0.1)),
    ]
    sampler(logits, seqs)
    assert torch.equal(logits, before)


def test_top_k_one_equals_greedy_at_temperature_one():
    sampler = make_sampler()
    logits = torch.randn(16, VOCAB)
    greedy = sampler(logits, [make_seq() for _ in range(16)]).token_ids
    for _ in range(5):
        seqs = [make_seq(SamplingParams(temperature=1.0, top_k=1)) for _ in range(16)]
        assert sampler(logits, seqs).token_ids == greedy
    # also with a penalty that changes the argmax
    seqs = [make_seq(SamplingParams(temperature=t, top_k=1, repetition_penalty=3.0), prompt=[g]) for t, g in
            zip([0.0, 1.0, 1.5], greedy[:3])]
    ref = [make_seq(SamplingParams(temperature=0.0, repetition_penalty=3.0), prompt=[g]) for g in greedy[:3]]
    assert sampler(logits[:3], seqs).token_ids == sampler(logits[:3], ref).token_ids


def run_steps(sampler, seqs, steps):
    """Samples `steps` tokens for every seq, appending them; returns each seq's generated tokens."""
    for step in range(steps):
        logits = torch.stack([step_logits(step) for _ in seqs])
        out = sampler(logits, seqs)
        for seq, tok in zip(seqs, out.token_ids):
            seq.token_ids.append(tok)
    return [s.output_token_ids for s in seqs]


def test_seeded_row_is_independent_of_batch_neighbours():
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, presence_penalty=0.3)
    alone = run_steps(make_sampler(seed=0), [make_seq(params)], 40)[0]
    neighbours = [
        make_seq(SamplingParams(temperature=1.3)),
        make_seq(SamplingParams(temperature=0.5, top_k=5, seed=7)),
        make_seq(SamplingParams(temperature=0.0)),
        make_seq(SamplingParams(temperature=1.0, min_p=0.2, logprobs=3)),
    ]
    batch = neighbours[:2] + [make_seq(params)] + neighbours[2:]
    in_batch = run_steps(make_sampler(seed=99), batch, 40)[2]
    assert in_batch == alone
    assert len(set(alone)) > 5  # it really sampled


def test_seeded_row_without_filters_is_independent_of_filtering_neighbours():
    params = SamplingParams(temperature=1.0, seed=77)
    alone = run_steps(make_sampler(), [make_seq(params)], 30)[0]
    batch = [make_seq(SamplingParams(temperature=1.0, top_k=3)), make_seq(params),
             make_seq(SamplingParams(temperature=0.7, top_p=0.5, seed=1))]
    assert run_steps(make_sampler(seed=8), batch, 30)[1] == alone


def test_seeded_completions_differ_by_index_and_repeat_by_seed():
    params = SamplingParams(temperature=1.0, seed=42, n=2)
    first = run_steps(make_sampler(), [make_seq(params, index=0), make_seq(params, index=1)], 30)
    again = run_steps(make_sampler(), [make_seq(params, index=0), make_seq(params, index=1)], 30)
    assert first == again
    assert first[0] != first[1]
    assert derive_seed(42, 0) == 42 and derive_seed(42, 1) != derive_seed(42, 2)


def test_sampling_seed_fixed_lazily_only_for_random_rows():
    seqs = [make_seq(SamplingParams(temperature=0.0, seed=1)), make_seq(SamplingParams(temperature=1.0, seed=1)),
            make_seq(SamplingParams(temperature=1.0, seed=1), index=2), make_seq(SamplingParams(temperature=1.0))]
    sampler = make_sampler()
    sampler(torch.randn(4, VOCAB), seqs)
    assert seqs[0].sampling_seed is None
    assert seqs[1].sampling_seed == 1 and seqs[2].sampling_seed == to_int64(derive_seed(1, 2))
    drawn = seqs[3].sampling_seed
    assert isinstance(drawn, int)
    sampler(torch.randn(4, VOCAB), seqs)
    assert seqs[3].sampling_seed == drawn  # drawn once, then kept


def test_recomputed_or_replayed_sequence_draws_the_same_tokens():
    """The counter is the number of generated tokens: a sequence rebuilt from its tokens (after
    preemption, on another replica, or replayed from a log) with the same sampling seed draws
    exactly what the original drew, in whatever batch."""
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=11), SamplingParams(temperature=0.8, min_p=0.05)]
    original = [make_seq(p) for p in params]
    tokens = run_steps(make_sampler(seed=1), original, 25)
    for cut in (0, 7, 24):
        rebuilt = [make_seq(p, output=t[:cut]) for p, t in zip(params, tokens)]
        rebuilt[1].sampling_seed = original[1].sampling_seed  # what a handoff or a replay log carries
        batch = [make_seq(SamplingParams(temperature=1.2))] + rebuilt[::-1]
        logits = torch.stack([step_logits(cut) for _ in batch])
        out = make_sampler(seed=99)(logits, batch).token_ids
        assert out[1:] == [tokens[1][cut], tokens[0][cut]]


def test_kernel_and_torch_reference_backends_agree():
    params = [SamplingParams(temperature=0.9, top_k=5, seed=1), SamplingParams(temperature=1.1, top_p=0.7, seed=2),
              SamplingParams(temperature=0.7, min_p=0.2, seed=3), SamplingParams(temperature=1.0, seed=4),
              SamplingParams(temperature=0.0)]
    got = {}
    for backend in ("auto", "torch"):
        sampler = Sampler(VOCAB, [EOS], seed=0, kernel_backend=backend)
        got[backend] = run_steps(sampler, [make_seq(p) for p in params], 30)
    assert got["auto"] == got["torch"]


def test_unseeded_rows_vary_and_sampler_seed_reproduces():
    params = SamplingParams(temperature=1.0)
    logits = torch.zeros(1, VOCAB)  # uniform
    sampler = make_sampler(seed=5)
    draws = [sampler(logits, [make_seq(params)]).token_ids[0] for _ in range(30)]
    assert len(set(draws)) > 10
    sampler2 = make_sampler(seed=5)
    assert draws == [sampler2(logits, [make_seq(params)]).token_ids[0] for _ in range(30)]


@pytest.mark.parametrize(
    "temperature,top_k,top_p,min_p",
    [(1.0, 5, 1.0, 0.0), (0.8, 0, 0.6, 0.0), (1.2, 0, 1.0, 0.15), (1.0, 10, 0.8, 0.1), (0.5, -1, 0.9, 0.0)],
)
def test_filters_never_sample_a_filtered_token(temperature, top_k, top_p, min_p):
    torch.manual_seed(0)
    base = torch.randn(VOCAB) * 1.5
    expected = reference_allowed(base, temperature, top_k, top_p, min_p)
    draws = 20000
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    sampler = make_sampler(seed=3)
    out = sampler(base.expand(draws, VOCAB), [make_seq(params) for _ in range(draws)])
    counts = Counter(out.token_ids)
    assert set(counts) <= set(expected)
    for tok, p in expected.items():  # and frequencies follow the renormalised distribution
        assert abs(counts[tok] / draws - p) < 4 * math.sqrt(p * (1 - p) / draws) + 1e-3


def test_mixed_batch_filters_apply_per_row():
    torch.manual_seed(1)
    base = torch.randn(VOCAB)
    rows = [SamplingParams(temperature=1.0, top_k=2), SamplingParams(temperature=1.0),
            SamplingParams(temperature=1.0, top_p=0.3), SamplingParams(temperature=0.0)]
    reps = 300
    sampler = make_sampler(seed=4)
    out = sampler(base.expand(len(rows) * reps, VOCAB), [make_seq(p) for p in rows for _ in range(reps)])
    seen = [set(out.token_ids[i * reps : (i + 1) * reps]) for i in range(len(rows))]
    top2 = set(base.topk(2).indices.tolist())
    assert seen[0] == top2
    assert len(seen[1]) > 10
    assert seen[2] <= set(reference_allowed(base, 1.0, 0, 0.3, 0.0))
    assert seen[3] == {int(base.argmax())}


def reference_penalties(logits, seq):
    p = seq.params
    out = logits.clone()
    for tok in set(seq.token_ids):
        x = out[tok]
        out[tok] = x / p.repetition_penalty if x > 0 else x * p.repetition_penalty
    for tok, count in Counter(seq.output_token_ids).items():
        out[tok] = out[tok] - p.frequency_penalty * count
        out[tok] = out[tok] - p.presence_penalty
    return out


def test_penalties_match_reference_formulas():
    torch.manual_seed(2)
    seqs = [
        make_seq(SamplingParams(repetition_penalty=1.3), prompt=[1, 5, 5, 9], output=[9, 11, 11]),
        make_seq(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), prompt=[2, 4], output=[4, 7, 7, 7]),
        make_seq(SamplingParams(repetition_penalty=0.8, presence_penalty=-1.0, frequency_penalty=1.5),
                 prompt=[0, 63], output=[63, 12, 12, 0]),
        make_seq(SamplingParams(), prompt=[1, 2], output=[3]),
    ]
    for dtype in (torch.float32, torch.float64):
        logits = torch.randn(len(seqs), VOCAB, dtype=dtype)
        got = apply_penalties(logits.clone(), seqs)
        for r, seq in enumerate(seqs):
            assert torch.equal(got[r], reference_penalties(logits[r], seq))


def test_penalties_steer_greedy_and_only_touch_their_rows():
    logits = torch.zeros(2, VOCAB, dtype=torch.float64)
    logits[:, 10] = 2.0
    logits[:, 20] = 1.5
    seqs = [make_seq(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt=[10]), make_seq(prompt=[10])]
    assert make_sampler()(logits, seqs).token_ids == [20, 10]
    seqs = [make_seq(SamplingParams(temperature=0.0, frequency_penalty=0.3), output=[10, 10]), make_seq(output=[10])]
    assert make_sampler()(logits, seqs).token_ids == [20, 10]
    seqs = [make_seq(SamplingParams(temperature=0.0, presence_penalty=0.6), prompt=[20], output=[10])]
    assert make_sampler()(logits[:1], seqs).token_ids == [20]


def test_min_tokens_suppresses_eos_and_stop_tokens():
    logits = torch.zeros(1, VOCAB)
    logits[0, EOS] = 10.0
    logits[0, 7] = 9.0
    logits[0, 8] = 8.0
    sampler = make_sampler()
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[7])
    assert sampler(logits, [make_seq(params, output=[])]).token_ids == [8]
    assert sampler(logits, [make_seq(params, output=[1])]).token_ids == [8]
    assert sampler(logits, [make_seq(params, output=[1, 1])]).token_ids == [EOS]
    ignore = params.replace(ignore_eos=True)
    assert sampler(logits, [make_seq(ignore, output=[])]).token_ids == [EOS]
    # random rows too: eos and stop ids are never drawn
    rnd = SamplingParams(temperature=1.0, min_tokens=1, stop_token_ids=[7])
    out = sampler(logits.expand(500, VOCAB), [make_seq(rnd) for _ in range(500)])
    assert EOS not in out.token_ids and 7 not in out.token_ids


def test_logprobs_come_from_raw_logits():
    torch.manual_seed(3)
    logits = torch.randn(4, VOCAB + 3, dtype=torch.float64)
    logits[:, VOCAB:] = 50.0
    seqs = [
        make_seq(SamplingParams(temperature=0.0, logprobs=3)),
        make_seq(SamplingParams(temperature=0.7, top_k=4, repetition_penalty=1.7, logprobs=0), prompt=[5, 6]),
        make_seq(SamplingParams(temperature=0.0)),
        make_seq(SamplingParams(temperature=1.0, logprobs=5)),
    ]
    out = make_sampler()(logits, seqs)
    assert out.logprobs[2] is None
    raw = torch.log_softmax(logits[:, :VOCAB], -1)
    for r in (0, 1, 3):
        d, tok, n = out.logprobs[r], out.token_ids[r], seqs[r].params.logprobs
        order = raw[r].argsort(descending=True).tolist()
        assert tok in d
        assert set(d) == {tok} | set(order[:n])
        for t, lp in d.items():
            assert lp.logprob == pytest.approx(raw[r, t].item(), abs=1e-12)
            assert lp.rank == order.index(t) + 1
            assert lp.decoded_token is None
    assert len(out.logprobs[1]) == 1


def test_sampled_token_rank_when_not_top():
    logits = torch.zeros(1, VOCAB, dtype=torch.float64)
    logits[0, EOS], logits[0, 9], logits[0, 4] = 5.0, 4.0, 3.0
    out = make_sampler()(logits, [make_seq(SamplingParams(temperature=0.0, min_tokens=1, logprobs=1))])
    assert out.token_ids == [9]
    raw = torch.log_softmax(logits[0], -1)
    assert out.logprobs[0][9].rank == 2 and out.logprobs[0][9].logprob == pytest.approx(raw[9].item())
    assert out.logprobs[0][EOS].rank == 1
