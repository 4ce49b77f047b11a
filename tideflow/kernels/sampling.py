"""Batched top-k / top-p / min-p sampling driven by a counter-based generator.

Every random number is a pure function of (seed, counter, token id): a splitmix64 hash, not a
stateful generator. A row's draw therefore depends only on its own seed, its own counter and
its own logits, never on its neighbours in the batch, on batch order or on how many draws other
requests made before. The engine passes counter = the number of tokens the request has
generated so far, so a request that is preempted and recomputed, handed to another replica, or
replayed from a log after a crash draws exactly the same tokens again: that is what makes
exactly-once replay possible without checkpointing any generator state.

The draw is the Gumbel-max trick: the token is argmax over the kept tokens of
`logit / temperature - log(-log(u))` with one uniform `u` per (row, token id), which samples
from softmax(logit / temperature) restricted to the kept tokens. Kept tokens follow vLLM:
top-k first; then top-p over the renormalised top-k (drop a token once the mass before it in
descending order reaches top_p); then min-p (drop p < min_p * p_max). Descending order is
stable, so equal logits keep index order and top_k=1 is greedy.

- `sample_ref`, `kept_ref`: the torch reference (full sort, cumsum, the same integer hash in torch).
- `_sample_cpu`: numba, parallel over rows. It never sorts a whole row: a histogram of
  `max - logit` finds the one bucket the top-k / top-p cut falls in, and only that is sorted.
- `tideflow.kernels.cuda.sampling`: numba.cuda, one block per row, no sort (threshold search).
- `sample`: the checked entry point, dispatching on the tensors' device.
All three compute in float64 and produce the same token ids (up to rounding at exact ties).

A token bitmask (structured outputs: the tokens a grammar allows next) is applied inside the
draw: a row's disallowed tokens are -inf before top-k / top-p / min-p, so the filters work over
the allowed tokens only, as vLLM applies its grammar bitmask before sampling. Its layout is
llguidance's: int32 words [R, W], token v allowed when bit v % 32 of word v // 32 is set; ids
from 32 * W up are never allowed (a model's padded vocabulary rows past the tokenizer's), and
W = 0 means no mask. A greedy row under a mask runs the same kernel with top_k = 1 (stable
descending order: the lowest id among the best allowed logits, torch's argmax).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba.extending import register_jitable

from tideflow.kernels.checks import check_backend, check_tensor

# splitmix64 (Steele, Lea, Flood 2014; Stafford's mix13 finaliser)
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ONE, _S11, _S27, _S30, _S31 = (np.uint64(s) for s in (1, 11, 27, 30, 31))
_TWO_M53 = 2.0**-53

_NUM_BUCKETS = 64  # histogram of (max - x) per row on CPU: bucket b holds [b, b+1) / _BUCKETS_PER_UNIT
_BUCKETS_PER_UNIT = 4.0


def to_int64(value: int) -> int:
    """A 64-bit seed (any Python int, taken mod 2**64) as the int64 with the same bits: seeds
    travel in int64 tensors and the kernels read them as uint64."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


# -- the generator, shared by the numba CPU and CUDA kernels ----------------------------------
@register_jitable
def _mix64(z):
    """splitmix64's finaliser: a bijection on uint64 whose output bits all depend on every input bit."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@register_jitable
def row_key(seed, counter):
    """The key of one draw: output `counter` of the splitmix64 stream seeded by `mix(seed)`.
    Seed and counter may arrive as int64; their bits are read as uint64."""
    return _mix64(_mix64(np.uint64(seed) + _GAMMA) + np.uint64(counter) * _GAMMA)


@register_jitable
def gumbel(key, token):
    """-log(-log(u)) for u in (0, 1): 53 bits of the splitmix64 stream `key` at position `token`."""
    z = _mix64(key + (np.uint64(token) + _ONE) * _GAMMA)
    u = (float(z >> _S11) + 0.5) * _TWO_M53
    return -math.log(-math.log(u))


@register_jitable
def allowed(bitmask, r, v):
    """Whether row r may draw token v under `bitmask` (see the module docstring)."""
    words = bitmask.shape[1]
    if words == 0:
        return True
    w = v >> 5
    return w < words and (bitmask[r, w] >> (v & 31)) & 1 != 0


# -- torch reference ---------------------------------------------------------------------------
def _signed(value: np.uint64) -> int:
    return to_int64(int(value))


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic: mask the sign copies away)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix64_torch(z: torch.Tensor) -> torch.Tensor:
    """`_mix64` on int64 tensors: torch's int64 multiply wraps mod 2**64 like uint64."""
    z = (z ^ _shr(z, 30)) * _signed(_M1)
    z = (z ^ _shr(z, 27)) * _signed(_M2)
    return z ^ _shr(z, 31)


def gumbel_ref(seeds: torch.Tensor, counters: torch.Tensor, vocab: int) -> torch.Tensor:
    """[R, vocab] float64 Gumbel noise of rows with int64 `seeds` / `counters`, as `gumbel` draws it."""
    gamma = _signed(_GAMMA)
    key = _mix64_torch(_mix64_torch(seeds + gamma) + counters * gamma)
    tokens = torch.arange(1, vocab + 1, dtype=torch.int64, device=seeds.device)
    z = _mix64_torch(key[:, None] + tokens * gamma)
    u = (_shr(z, 11).to(torch.float64) + 0.5) * _TWO_M53
    return -torch.log(-torch.log(u))


def allowed_ref(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[R, vocab] bool: the tokens `bitmask` ([R, W] int32, `allowed`'s layout) lets each row draw."""
    rows, words = bitmask.shape
    ids = torch.arange(vocab, device=bitmask.device)
    if words == 0:
        return torch.ones((rows, vocab), dtype=torch.bool, device=bitmask.device)
    word = ids >> 5
    bits = (bitmask[:, word.clamp(max=words - 1)].to(torch.int64) >> (ids & 31)) & 1
    return (bits != 0) & (word < words)


def mask_ref(logits: torch.Tensor, bitmask: torch.Tensor | None) -> torch.Tensor:
    """`logits` with the tokens `bitmask` disallows at -inf (a copy; the logits when no mask)."""
    if bitmask is None or bitmask.shape[1] == 0:
        return logits
    return logits.masked_fill(~allowed_ref(bitmask, logits.shape[1]), float("-inf"))


def kept_ref(logits, temperature, top_k, top_p, min_p) -> torch.Tensor:
    """[R, V] bool by token id: the token survives top-k, then top-p, then min-p. Arguments as
    in `sample_ref`."""
    vocab = logits.shape[1]
    xs, order = (logits.to(torch.float64) / temperature[:, None]).sort(dim=-1, descending=True, stable=True)
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab)
    kept = torch.arange(vocab, device=xs.device) < k[:, None]
    probs = xs.masked_fill(~kept, float("-inf")).softmax(dim=-1)
    kept &= ~((probs.cumsum(dim=-1) - probs >= top_p[:, None]) & (top_p[:, None] < 1.0))
    kept &= ~(probs < min_p[:, None] * probs[:, :1])  # sorted: column 0 is the top token, always kept
    return torch.zeros_like(kept).scatter_(1, order, kept)


def sample_ref(logits, temperature, top_k, top_p, min_p, seeds, counters, bitmask=None) -> torch.Tensor:
    """logits [R, V] float; temperature, top_p, min_p [R] float64 (top_p 1: off, min_p 0: off);
    top_k, seeds, counters [R] int64 (top_k <= 0 or >= V: off); bitmask [R, W] int32 or None
    (the tokens each row may draw). Returns [R] int64 token ids."""
    logits = mask_ref(logits, bitmask)
    x = logits.to(torch.float64) / temperature[:, None]
    score = x + gumbel_ref(seeds, counters, logits.shape[1])
    return score.masked_fill(~kept_ref(logits, temperature, top_k, top_p, min_p), float("-inf")).argmax(dim=-1)


# -- numba CPU kernel --------------------------------------------------------------------------
@numba.njit(cache=True)
def _bucket(d):  # pragma: no cover (jitted)
    """Histogram bucket of d = max - x >= 0 (inf and nan land in the last one)."""
    if d < _NUM_BUCKETS / _BUCKETS_PER_UNIT:
        return int(d * _BUCKETS_PER_UNIT)
    return _NUM_BUCKETS - 1


@numba.njit(cache=True)
def _draw_unsorted(x, min_p, key):  # pragma: no cover (jitted)
    """Gumbel-max over the whole row (no top-k / top-p), min-p applied on the way."""
    top, total = -np.inf, 0.0
    if min_p > 0.0:
        top = x.max()
        for v in range(x.shape[0]):
            total += math.exp(x[v] - top)
    best, arg = -np.inf, 0
    for v in range(x.shape[0]):
        if min_p > 0.0 and math.exp(x[v] - top) / total < min_p * (1.0 / total):
            continue
        s = x[v] + gumbel(key, v)
        if s > best:
            best, arg = s, v
    return arg


@numba.njit(cache=True)
def _sorted_bucket(x, bucket, b):  # pragma: no cover (jitted)
    """Token ids of histogram bucket b in stable descending order of x (ties in id order)."""
    ids = np.flatnonzero(bucket == b)
    return ids[np.argsort(-x[ids], kind="mergesort")]


@numba.njit(cache=True)
def _head_mask(x, e, top, top_k, top_p):  # pragma: no cover (jitted)
    """(kept, z) after top-k then top-p; z is the top-k set's mass (relative to exp(top)).

    A histogram of (top - x) splits the row into buckets that are wholly kept, the one bucket
    the cut falls in, and the rest; only that bucket is sorted and walked token by token."""
    vocab = x.shape[0]
    bucket = np.empty(vocab, dtype=np.int64)
    counts = np.zeros(_NUM_BUCKETS, dtype=np.int64)
    mass = np.zeros(_NUM_BUCKETS)
    for v in range(vocab):
        bucket[v] = _bucket(top - x[v])
        counts[bucket[v]] += 1
        mass[bucket[v]] += e[v]
    full, partial, z = _NUM_BUCKETS, np.empty(0, dtype=np.int64), mass.sum()  # buckets < full: wholly kept
    if top_k < vocab:
        b, before = 0, 0
        while before + counts[b] < top_k:
            before += counts[b]
            b += 1
        full, partial = b, _sorted_bucket(x, bucket, b)[: top_k - before]
        z = mass[:b].sum() + e[partial].sum()
    if top_p < 1.0:
        b, acc = 0, 0.0
        while b < full and acc + mass[b] / z < top_p:
            acc += mass[b] / z
            b += 1
        while True:  # walk the cut bucket; if rounding left its tail short of top_p, go on to the next
            ids = partial if b == full else _sorted_bucket(x, bucket, b)
            n = 0
            while n < ids.shape[0] and acc < top_p:
                acc += e[ids[n]] / z
                n += 1
            if n < ids.shape[0] or acc >= top_p or b == full:
                break
            b += 1
        full, partial = b, ids[:n]
    kept = bucket < full
    kept[partial] = True
    return kept, z


@numba.njit(cache=True)
def _draw_filtered(x, top_k, top_p, min_p, key):  # pragma: no cover (jitted)
    """Gumbel-max over the tokens top-k, top-p and min-p keep."""
    top = x.max()
    e = np.exp(x - top)
    kept, z = _head_mask(x, e, top, top_k, top_p)
    best, arg = -np.inf, -1
    for v in range(x.shape[0]):
        if kept[v] and not (min_p > 0.0 and e[v] / z < min_p * (1.0 / z)):
            s = x[v] + gumbel(key, v)
            if arg < 0 or s > best:
                best, arg = s, v
    return arg


@register_jitable
def _sample_row(logits, r, temperature, top_k, top_p, min_p, seeds, counters, bitmask, out):
    vocab = logits.shape[1]
    x = np.empty(vocab)
    for v in range(vocab):
        x[v] = logits[r, v] / temperature[r] if allowed(bitmask, r, v) else -np.inf
    key = row_key(seeds[r], counters[r])
    k = top_k[r] if 0 < top_k[r] < vocab else vocab
    if k < vocab or top_p[r] < 1.0:
        out[r] = _draw_filtered(x, k, top_p[r], min_p[r], key)
    else:
        out[r] = _draw_unsorted(x, min_p[r], key)


@numba.njit(parallel=True, cache=True)
def _sample_cpu(logits, temperature, top_k, top_p, min_p, seeds, counters, bitmask, out):  # pragma: no cover (jitted)
    for r in numba.prange(logits.shape[0]):
        _sample_row(logits, r, temperature, top_k, top_p, min_p, seeds, counters, bitmask, out)


@numba.njit(cache=True)
def _sample_one_cpu(logits, temperature, top_k, top_p, min_p, seeds, counters, bitmask, out):  # pragma: no cover (jitted)
    """A single row: no parallel region to start and join (it costs more than the row on a busy host)."""
    _sample_row(logits, 0, temperature, top_k, top_p, min_p, seeds, counters, bitmask, out)


# -- entry point -------------------------------------------------------------------------------
_NO_MASK = np.zeros((0, 0), dtype=np.int32)  # W = 0: every token allowed (one kernel signature for both)


def sample(
    logits, temperature, top_k, top_p, min_p, seeds, counters, *, bitmask=None, out=None, backend: str = "auto"
) -> torch.Tensor:
    """Checked entry point: one token id per row ([R] int64, `out` if given). CPU tensors run the
    numba kernel, CUDA tensors the numba.cuda kernel; backend="torch" runs `sample_ref`.
    Arguments as in `sample_ref`; temperatures must be positive (greedy rows take the argmax
    elsewhere, or top_k=1 here under a bitmask), all tensors contiguous and on one device, and
    every row must allow at least one token of finite logit."""
    fn = "sample"
    check_backend(fn, backend)
    check_tensor(fn, "logits", logits, shape=(None, None), dtypes=(torch.float32, torch.float64), device=None)
    rows, dev = logits.shape[0], logits.device
    if logits.shape[1] == 0:
        raise ValueError("sample: logits has an empty vocabulary")
    for name, t in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p)):
        check_tensor(fn, name, t, shape=(rows,), dtypes=(torch.float64,), device=dev)
    for name, t in (("top_k", top_k), ("seeds", seeds), ("counters", counters)):
        check_tensor(fn, name, t, shape=(rows,), dtypes=(torch.int64,), device=dev)
    if bitmask is not None:
        check_tensor(fn, "bitmask", bitmask, shape=(rows, None), dtypes=(torch.int32,), device=dev)
    if out is None:
        out = torch.empty(rows, dtype=torch.int64, device=dev)
    check_tensor(fn, "out", out, shape=(rows,), dtypes=(torch.int64,), device=dev)
    if backend == "torch":
        return out.copy_(sample_ref(logits, temperature, top_k, top_p, min_p, seeds, counters, bitmask))
    if dev.type == "cuda":
        from tideflow.kernels.cuda.sampling import mask_cuda, sample_cuda

        if bitmask is not None:  # one pass writing the masked rows, then the unmasked kernel
            logits = mask_cuda(logits, bitmask)
        sample_cuda(logits, temperature, top_k, top_p, min_p, seeds, counters, out)
        return out
    if dev.type != "cpu":
        raise ValueError(f"sample: no kernel for device {dev}; use backend='torch'")
    kernel = _sample_one_cpu if rows == 1 else _sample_cpu
    kernel(
        logits.numpy(), temperature.numpy(), top_k.numpy(), top_p.numpy(), min_p.numpy(),
        seeds.numpy(), counters.numpy(), _NO_MASK if bitmask is None else bitmask.numpy(), out.numpy(),
    )
    return out


def bench_cases() -> list[tuple[str, object, object]]:
    """(name, kernel, reference) on 64 rows x 32k vocab with top-p 0.9, temperature 0.8: the
    decode-step shape of a mid-sized batch."""
    rows, vocab = 64, 32768
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, vocab, generator=gen) * 3
    args = (
        logits,
        torch.full((rows,), 0.8, dtype=torch.float64),
        torch.zeros(rows, dtype=torch.int64),
        torch.full((rows,), 0.9, dtype=torch.float64),
        torch.zeros(rows, dtype=torch.float64),
        torch.arange(rows, dtype=torch.int64),
        torch.full((rows,), 17, dtype=torch.int64),
    )
    return [("sampling top-p 64x32k", lambda: sample(*args), lambda: sample(*args, backend="torch"))]
