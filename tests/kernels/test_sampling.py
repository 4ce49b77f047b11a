"""The numba sampling kernel against its torch reference on fresh random inputs every run, the
counter-based generator's properties (row independence, replay), and the sampled distribution.

Each randomised test draws its seed from os.urandom and names it in its assertion messages;
rerun a failure with that seed in `_rng(seed)`."""

from __future__ import annotations

import math
import os

import numba
import numpy as np
import pytest
import torch

from tests.runtime.helpers import reference_allowed

from tideflow.kernels.sampling import _NO_MASK, _sample_cpu, allowed_ref, gumbel, gumbel_ref, row_key, sample, sample_ref, to_int64


def _rng(seed: int | None = None) -> tuple[np.random.Generator, int]:
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    return np.random.default_rng(seed), seed


def _params(rng, rows: int, vocab: int) -> dict[str, torch.Tensor]:
    """Per-row parameters mixing every filter combination, off values included."""
    top_k = rng.choice([0, -1, 1, 2, 5, 40, vocab - 1, vocab, vocab + 3], rows)
    top_p = np.where(rng.random(rows) < 0.5, rng.uniform(0.05, 1.0, rows), 1.0)
    min_p = np.where(rng.random(rows) < 0.4, rng.uniform(0.0, 0.5, rows), 0.0)
    return dict(
        temperature=torch.from_numpy(rng.uniform(0.2, 2.0, rows)),
        top_k=torch.from_numpy(top_k.astype(np.int64)),
        top_p=torch.from_numpy(top_p),
        min_p=torch.from_numpy(min_p),
        seeds=torch.from_numpy(rng.integers(-(2**63), 2**63 - 1, rows, dtype=np.int64)),
        counters=torch.from_numpy(rng.integers(0, 10_000, rows, dtype=np.int64)),
    )


def _logits(rng, rows: int, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """Spread-out logits with the awkward cases: exact ties and suppressed (-inf) tokens."""
    logits = torch.from_numpy(rng.standard_normal((rows, vocab)) * rng.uniform(0.5, 6.0, (rows, 1))).to(dtype)
    logits[:, 3:7] = logits[:, 2:3]  # ties: stable order keeps index order
    logits[0, : vocab // 2] = float("-inf")  # min_tokens-style suppression
    return logits


def _draw(logits, p, **kwargs):
    return sample(logits, p["temperature"], p["top_k"], p["top_p"], p["min_p"], p["seeds"], p["counters"], **kwargs)


def _reference(logits, p):
    return sample_ref(logits, p["temperature"], p["top_k"], p["top_p"], p["min_p"], p["seeds"], p["counters"])


@pytest.mark.parametrize("vocab", [7, 1000, 32000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_tokens_as_reference(vocab, dtype):
    rng, seed = _rng()
    rows = 48
    logits = _logits(rng, rows, vocab, dtype)
    p = _params(rng, rows, vocab)
    expected = _reference(logits, p)
    out = torch.full((rows,), -7, dtype=torch.int64)  # poisoned: every row must be written
    got = _draw(logits, p, out=out)
    assert got is out
    assert torch.equal(got, expected), f"seed {seed}: rows {torch.nonzero(got != expected).flatten().tolist()}"
    assert torch.equal(_draw(logits, p, backend="torch"), expected)


def test_kernel_writes_every_row_of_a_poisoned_output():
    rng, seed = _rng()
    rows, vocab = 16, 300
    logits = _logits(rng, rows, vocab, torch.float64)
    p = _params(rng, rows, vocab)
    out = np.full(rows, -1, dtype=np.int64)
    _sample_cpu(logits.numpy(), *(p[k].numpy() for k in ("temperature", "top_k", "top_p", "min_p", "seeds", "counters")),
                _NO_MASK, out)
    assert np.array_equal(out, _reference(logits, p).numpy()), f"seed {seed}"


@numba.njit
def _kernel_noise(seeds, counters, vocab):
    out = np.empty((seeds.shape[0], vocab))
    for r in range(seeds.shape[0]):
        key = row_key(seeds[r], counters[r])
        for v in range(vocab):
            out[r, v] = gumbel(key, v)
    return out


def test_torch_hash_equals_kernel_hash_and_is_stable():
    rng, seed = _rng()
    seeds = torch.from_numpy(rng.integers(-(2**63), 2**63 - 1, 8, dtype=np.int64))
    counters = torch.from_numpy(rng.integers(0, 2**40, 8, dtype=np.int64))
    ref = gumbel_ref(seeds, counters, 500)
    got = torch.from_numpy(_kernel_noise(seeds.numpy(), counters.numpy(), 500))
    torch.testing.assert_close(got, ref, rtol=1e-14, atol=1e-14, msg=f"seed {seed}")
    # fixed values: replaying a log written by an older tideflow must draw the same tokens
    golden = gumbel_ref(torch.tensor([0, 42, to_int64(2**64 - 1)]), torch.tensor([0, 7, 123456]), 3)
    assert golden.flatten().tolist() == pytest.approx(GOLDEN, abs=1e-12)


GOLDEN = [  # gumbel(row_key(seed, counter), token) for (seed, counter) in [(0, 0), (42, 7), (2**64 - 1, 123456)]
    -0.08116903215863956, -0.2719792283174783, -0.2650896473246565,
    0.2043412655824977, 2.8378459031548533, 0.7758507462008193,
    -0.754931988425126, 2.10641862214729, 1.2432678726302733,
]


def test_row_draw_depends_only_on_its_seed_counter_and_logits():
    rng, seed = _rng()
    rows, vocab = 24, 2000
    logits = _logits(rng, rows, vocab, torch.float32)
    p = _params(rng, rows, vocab)
    alone = torch.cat([_draw(logits[r : r + 1], {k: v[r : r + 1] for k, v in p.items()}) for r in range(rows)])
    perm = torch.from_numpy(rng.permutation(rows))
    shuffled = _draw(logits[perm].contiguous(), {k: v[perm].contiguous() for k, v in p.items()})
    assert torch.equal(_draw(logits, p), alone), f"seed {seed}"
    assert torch.equal(shuffled, alone[perm]), f"seed {seed}"
    other = dict(p, counters=p["counters"] + 1)  # the next step draws afresh
    assert not torch.equal(_draw(logits, other), alone), f"seed {seed}"


def _frequencies(logits_row: torch.Tensor, draws: int, **filters) -> np.ndarray:
    """Token frequencies of `draws` rows sharing one distribution, seeds 0..draws-1 (deterministic)."""
    vocab = logits_row.shape[0]
    full = lambda value, dtype: torch.full((draws,), value, dtype=dtype)  # noqa: E731
    tokens = sample(
        logits_row.expand(draws, vocab).contiguous(),
        full(filters.get("temperature", 1.0), torch.float64),
        full(filters.get("top_k", 0), torch.int64),
        full(filters.get("top_p", 1.0), torch.float64),
        full(filters.get("min_p", 0.0), torch.float64),
        torch.arange(draws, dtype=torch.int64) * 7919,
        torch.full((draws,), 3, dtype=torch.int64),
    )
    return np.bincount(tokens.numpy(), minlength=vocab) / draws


def _allowed(logits_row: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> np.ndarray:
    """The renormalised distribution the filters leave, as a dense row."""
    out = np.zeros(logits_row.numel())
    for token, prob in reference_allowed(logits_row, temperature, top_k, top_p, min_p).items():
        out[token] = prob
    return out


@pytest.mark.parametrize(
    "filters",
    [{}, {"temperature": 0.6}, {"top_k": 4}, {"top_p": 0.7}, {"min_p": 0.15}, {"top_k": 6, "top_p": 0.8, "min_p": 0.05}],
)
def test_sampled_frequencies_follow_the_filtered_softmax(filters):
    logits_row = torch.from_numpy(np.random.default_rng(5).standard_normal(24) * 1.5)
    draws = 40_000
    freq = _frequencies(logits_row, draws, **filters)
    want = _allowed(logits_row, **filters)
    assert not freq[want == 0].any(), f"filtered tokens drawn: {np.flatnonzero(freq * (want == 0))}"
    kept = want > 0
    chi2 = draws * ((freq[kept] - want[kept]) ** 2 / want[kept]).sum()
    dof = kept.sum() - 1
    # Wilson-Hilferty: the chi-square quantile at z = 4.5 (p ~ 3e-6): a wrong distribution fails by far
    limit = dof * (1 - 2 / (9 * dof) + 4.5 * math.sqrt(2 / (9 * dof))) ** 3 if dof else 0.0
    assert chi2 <= limit, f"chi2 {chi2:.1f} > {limit:.1f} for {filters}"


def test_top_k_one_is_greedy_and_ties_take_the_lower_id():
    rng, seed = _rng()
    rows, vocab = 32, 5000
    logits = _logits(rng, rows, vocab, torch.float32)
    logits[1, 10] = logits[1, 20] = logits[1].max() + 1  # a tie at the top
    p = _params(rng, rows, vocab)
    p["top_k"] = torch.ones(rows, dtype=torch.int64)
    assert torch.equal(_draw(logits, p), logits.argmax(-1)), f"seed {seed}"


def test_top_p_and_min_p_never_draw_what_they_exclude():
    logits_row = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0], dtype=torch.float64)
    probs = torch.softmax(logits_row, -1)
    top_p = float(probs[:2].sum()) - 1e-9  # mass before token 2 reaches top_p: keep exactly {0, 1}
    assert set(np.flatnonzero(_frequencies(logits_row, 4000, top_p=top_p))) == {0, 1}
    min_p = float(probs[3] / probs[0]) + 1e-9  # token 3 falls just below min_p * p_max
    assert set(np.flatnonzero(_frequencies(logits_row, 4000, min_p=min_p))) == {0, 1, 2}


def test_rejects_bad_inputs():
    rng, _ = _rng(0)
    logits = _logits(rng, 4, 50, torch.float32)
    p = _params(rng, 4, 50)
    with pytest.raises(ValueError, match="logits must be torch.float32 or torch.float64"):
        _draw(logits.half(), p)
    with pytest.raises(ValueError, match=r"logits must have shape \(\*, \*\)"):
        _draw(logits[0], p)
    with pytest.raises(ValueError, match="logits must be contiguous"):
        _draw(logits.t(), {k: v[:50] for k, v in _params(rng, 50, 4).items()})
    with pytest.raises(ValueError, match="seeds must be torch.int64"):
        _draw(logits, dict(p, seeds=p["seeds"].int()))
    with pytest.raises(ValueError, match=r"top_p must have shape \(4,\)"):
        _draw(logits, dict(p, top_p=p["top_p"][:3]))
    with pytest.raises(ValueError, match="temperature is on meta but the inputs are on cpu"):
        _draw(logits, dict(p, temperature=p["temperature"].to("meta")))
    with pytest.raises(ValueError, match="backend must be one of"):
        _draw(logits, p, backend="cupy")
    with pytest.raises(ValueError, match=r"out must have shape \(4,\)"):
        _draw(logits, p, out=torch.empty(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="bitmask must be torch.int32"):
        _draw(logits, p, bitmask=torch.zeros((4, 2), dtype=torch.int64))
    with pytest.raises(ValueError, match=r"bitmask must have shape \(4, \*\)"):
        _draw(logits, p, bitmask=torch.zeros((3, 2), dtype=torch.int32))


# -- the token bitmask (structured outputs) -----------------------------------------------------
def _bitmask(rng, rows: int, vocab: int, words: int) -> torch.Tensor:
    """Random int32 words (about half the tokens allowed), every row allowing at least token 3
    (an id of finite logit in every `_logits` row but the first, where it is -inf: row 0 gets
    token vocab // 2 + 1 too, past its suppressed half)."""
    bits = torch.from_numpy(rng.integers(-(2**31), 2**31, (rows, words), dtype=np.int64).astype(np.int32))
    bits[:, 0] |= 1 << 3
    keep = min(vocab // 2 + 1, 32 * words - 1)
    bits[0, keep >> 5] |= np.int32(np.uint32(1 << (keep & 31)).view(np.int32))
    return bits


@pytest.mark.parametrize("vocab", [7, 1000, 32000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitmask_same_tokens_as_reference_and_only_allowed_ones(vocab, dtype):
    rng, seed = _rng()
    rows = 32
    logits = _logits(rng, rows, vocab, dtype)
    p = _params(rng, rows, vocab)
    bitmask = _bitmask(rng, rows, vocab, -(-vocab // 32))
    got = _draw(logits, p, bitmask=bitmask)
    assert torch.equal(got, _draw(logits, p, bitmask=bitmask, backend="torch")), f"seed {seed}"
    allowed = allowed_ref(bitmask, vocab)
    assert allowed[torch.arange(rows), got].all(), f"seed {seed}: a disallowed token was drawn"
    # greedy under the mask: top_k = 1 is the best allowed logit, lowest id first
    greedy = dict(p, top_k=torch.ones(rows, dtype=torch.int64), temperature=torch.ones(rows, dtype=torch.float64))
    want = logits.masked_fill(~allowed, float("-inf")).argmax(-1)
    assert torch.equal(_draw(logits, greedy, bitmask=bitmask), want), f"seed {seed}"
    assert torch.equal(_draw(logits, greedy, bitmask=bitmask, backend="torch"), want), f"seed {seed}"


def test_bitmask_shorter_than_the_vocabulary_rules_out_the_padded_ids():
    """A model's vocabulary padded past the tokenizer's: the words cover 64 ids of 100, and ids
    64..99 are never drawn however large their logits."""
    rng, seed = _rng()
    rows, vocab = 16, 100
    logits = _logits(rng, rows, vocab, torch.float32)
    logits[:, 64:] = 50.0
    p = _params(rng, rows, vocab)
    bitmask = torch.full((rows, 2), -1, dtype=torch.int32)  # every tokenizer id allowed
    for backend in ("auto", "torch"):
        got = _draw(logits, p, bitmask=bitmask, backend=backend)
        assert (got < 64).all(), f"seed {seed} {backend}: {got.tolist()}"
    assert (_draw(logits, p) >= 64).all(), "without the mask the padded ids win"


def test_single_allowed_token_is_always_drawn():
    rng, seed = _rng()
    rows, vocab = 8, 300
    logits = _logits(rng, rows, vocab, torch.float64)
    logits[0, 200] = 0.0  # row 0's first half is -inf
    bitmask = torch.zeros((rows, 10), dtype=torch.int32)
    bitmask[:, 200 >> 5] = 1 << (200 & 31)
    p = _params(rng, rows, vocab)
    for backend in ("auto", "torch"):
        assert _draw(logits, p, bitmask=bitmask, backend=backend).tolist() == [200] * rows, f"seed {seed}"
