"""numba.cuda sampling: one block per row, the same draws as `tideflow.kernels.sampling`.

A GPU block cannot cheaply sort a 100k-entry row, and does not need to: the kept set of top-k
(or top-p) is every token above a threshold value, plus the first few tokens equal to it in
index order (the stable descending order of the reference). The block finds the threshold by
bisecting over the row's own values, each step one pass over the row with block reductions
(count / mass above a candidate, min / max inside the interval), and the tie cut by bisecting
over token ids. Then each thread draws Gumbel-max over its strided share of the kept tokens and
a block argmax picks the token. Same hash, same float64 arithmetic as the CPU kernel.

A token bitmask (structured outputs) goes through `_mask_kernel` first: one pass writing the
rows with disallowed tokens at -inf into a scratch copy, which the sampling kernel then reads.
The bisections above read every row several times; testing the mask's bit in each of those
reads would cost more than the one extra pass.
"""

from __future__ import annotations

import math

from numba import cuda, float64, int64

from tideflow.kernels.cuda.device_math import dmax, dmin
from tideflow.kernels.sampling import allowed, gumbel, row_key

THREADS = 256  # threads per block; a power of two (the reductions halve it)


# -- block reductions: every thread passes its value and gets the block's result --------------
@cuda.jit(device=True)
def _sum(buf, val):  # pragma: no cover (device code)
    t = cuda.threadIdx.x
    buf[t] = val
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if t < step:
            buf[t] += buf[t + step]
        cuda.syncthreads()
        step //= 2
    total = buf[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def _min_max(lo_buf, hi_buf, lo, hi):  # pragma: no cover (device code)
    t = cuda.threadIdx.x
    lo_buf[t], hi_buf[t] = lo, hi
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if t < step:
            lo_buf[t] = dmin(lo_buf[t], lo_buf[t + step])
            hi_buf[t] = dmax(hi_buf[t], hi_buf[t + step])
        cuda.syncthreads()
        step //= 2
    lo, hi = lo_buf[0], hi_buf[0]
    cuda.syncthreads()
    return lo, hi


@cuda.jit(device=True)
def _argmax(score_buf, idx_buf, score, idx):  # pragma: no cover (device code)
    """Index of the highest score; equal scores go to the lower index."""
    t = cuda.threadIdx.x
    score_buf[t], idx_buf[t] = score, idx
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if t < step:
            s, i = score_buf[t + step], idx_buf[t + step]
            if s > score_buf[t] or (s == score_buf[t] and i < idx_buf[t]):
                score_buf[t], idx_buf[t] = s, i
        cuda.syncthreads()
        step //= 2
    best = idx_buf[0]
    cuda.syncthreads()
    return best


# -- the kept sets -------------------------------------------------------------------------------
@cuda.jit(device=True)
def _in_set(x, v, w, cut):  # pragma: no cover (device code)
    """Membership of a threshold set: above the value w, or equal to it with a token id below cut."""
    return x > w or (x == w and v < cut)


@cuda.jit(device=True)
def _above(logits, r, temp, top, z, w, cut, tau, use_mass, fbuf):  # pragma: no cover (device code)
    """Count (use_mass False) or probability mass of the set (w, cut) strictly above tau."""
    acc = 0.0
    for v in range(cuda.threadIdx.x, logits.shape[1], cuda.blockDim.x):
        x = logits[r, v] / temp
        if x > tau and _in_set(x, v, w, cut):
            acc += math.exp(x - top) / z if use_mass else 1.0
    return _sum(fbuf, acc)


@cuda.jit(device=True)
def _threshold(logits, r, temp, top, z, w, cut, goal, use_mass, fbuf, gbuf):  # pragma: no cover (device code)
    """The smallest value x* in the set (w, cut) whose count / mass strictly above it is below
    `goal`; -inf when even -inf qualifies. Invariant: above(lo) >= goal > above(hi)."""
    if _above(logits, r, temp, top, z, w, cut, -math.inf, use_mass, fbuf) < goal:
        return -math.inf
    lo, hi = -math.inf, math.inf
    while True:
        mn, mx = math.inf, -math.inf
        for v in range(cuda.threadIdx.x, logits.shape[1], cuda.blockDim.x):
            x = logits[r, v] / temp
            if lo < x <= hi and _in_set(x, v, w, cut):
                mn, mx = dmin(mn, x), dmax(mx, x)
        mn, mx = _min_max(fbuf, gbuf, mn, mx)
        if mn == mx:
            return mn
        mid = mn + (mx - mn) * 0.5
        if mid >= mx:
            mid = mn
        if _above(logits, r, temp, top, z, w, cut, mid, use_mass, fbuf) < goal:
            hi = mid
        else:
            lo = mid


@cuda.jit(device=True)
def _tie_cut(logits, r, temp, w, cut, value, need, fbuf):  # pragma: no cover (device code)
    """The token id c such that exactly `need` tokens of the set (w, cut) equal to `value` have
    ids below c (bisection over ids)."""
    lo, hi = 0, logits.shape[1]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        count = 0.0
        for v in range(cuda.threadIdx.x, mid, cuda.blockDim.x):
            x = logits[r, v] / temp
            if x == value and _in_set(x, v, w, cut):
                count += 1.0
        if _sum(fbuf, count) >= need:
            hi = mid
        else:
            lo = mid
    return hi


@cuda.jit(device=True)
def _equal(logits, r, temp, top, z, w, cut, value, use_mass, fbuf):  # pragma: no cover (device code)
    """Count (or mass) of the set (w, cut) equal to value."""
    acc = 0.0
    for v in range(cuda.threadIdx.x, logits.shape[1], cuda.blockDim.x):
        x = logits[r, v] / temp
        if x == value and _in_set(x, v, w, cut):
            acc += math.exp(x - top) / z if use_mass else 1.0
    return _sum(fbuf, acc)


@cuda.jit(device=True)
def _top_k(logits, r, temp, k, fbuf, gbuf):  # pragma: no cover (device code)
    """(w, cut) of the first k tokens in stable descending order."""
    vocab = logits.shape[1]
    w = _threshold(logits, r, temp, 0.0, 1.0, -math.inf, vocab, k, False, fbuf, gbuf)
    need = k - _above(logits, r, temp, 0.0, 1.0, -math.inf, vocab, w, False, fbuf)
    ties = _equal(logits, r, temp, 0.0, 1.0, -math.inf, vocab, w, False, fbuf)
    if need >= ties:
        return w, vocab
    return w, _tie_cut(logits, r, temp, -math.inf, vocab, w, need, fbuf)


@cuda.jit(device=True)
def _top_p(logits, r, temp, top, z, p, wk, ck, fbuf, gbuf):  # pragma: no cover (device code)
    """(w, cut) of the top-p prefix of the top-k set (wk, ck) whose mass is z: a token stays while
    the mass before it is below p; tokens equal to the threshold stay in id order."""
    vocab = logits.shape[1]
    w = _threshold(logits, r, temp, top, z, wk, ck, p, True, fbuf, gbuf)
    if w == -math.inf:
        return w, vocab
    before = _above(logits, r, temp, top, z, wk, ck, w, True, fbuf)
    ties = _equal(logits, r, temp, 0.0, 1.0, wk, ck, w, False, fbuf)
    each = math.exp(w - top) / z
    need = ties if each <= 0.0 else math.ceil((p - before) / each)
    if need >= ties:
        return w, vocab
    return w, _tie_cut(logits, r, temp, wk, ck, w, need, fbuf)


# -- the kernel ----------------------------------------------------------------------------------
@cuda.jit(device=True)
def _filters(logits, r, temp, k, p, mp, fbuf, gbuf):  # pragma: no cover (device code)
    """Row r's kept set as (top, z, wk, ck, wp, cp) for `_kept`: top is the row's max scaled
    logit, z the top-k set's mass relative to exp(top), (wk, ck) the top-k and (wp, cp) the
    top-p threshold sets."""
    vocab = logits.shape[1]
    wk, ck, wp, cp = -math.inf, vocab, -math.inf, vocab
    top, z = 0.0, 1.0
    use_k = 0 < k < vocab
    if use_k or p < 1.0 or mp > 0.0:
        top = -math.inf
        for v in range(cuda.threadIdx.x, vocab, cuda.blockDim.x):
            top = dmax(top, logits[r, v] / temp)
        unused, top = _min_max(fbuf, gbuf, math.inf, top)
        if use_k:
            wk, ck = _top_k(logits, r, temp, k, fbuf, gbuf)
        z = _above(logits, r, temp, top, 1.0, wk, ck, -math.inf, True, fbuf)
        if p < 1.0:
            wp, cp = _top_p(logits, r, temp, top, z, p, wk, ck, fbuf, gbuf)
    return top, z, wk, ck, wp, cp


@cuda.jit(device=True)
def _kept(x, v, mp, top, z, wk, ck, wp, cp):  # pragma: no cover (device code)
    """Token v (scaled logit x) survives top-k, top-p and min-p (p < min_p * p_max, p_max = 1 / z)."""
    if not (_in_set(x, v, wk, ck) and _in_set(x, v, wp, cp)):
        return False
    return not (mp > 0.0 and math.exp(x - top) / z < mp * (1.0 / z))


@cuda.jit(cache=True)
def _sample_kernel(logits, temperature, top_k, top_p, min_p, seeds, counters, out):  # pragma: no cover
    fbuf = cuda.shared.array(THREADS, float64)
    gbuf = cuda.shared.array(THREADS, float64)
    ibuf = cuda.shared.array(THREADS, int64)
    r, t = cuda.blockIdx.x, cuda.threadIdx.x
    vocab, temp, mp = logits.shape[1], temperature[r], min_p[r]
    top, z, wk, ck, wp, cp = _filters(logits, r, temp, top_k[r], top_p[r], mp, fbuf, gbuf)
    key = row_key(seeds[r], counters[r])
    best, arg = -math.inf, vocab
    for v in range(t, vocab, cuda.blockDim.x):
        x = logits[r, v] / temp
        if _kept(x, v, mp, top, z, wk, ck, wp, cp):
            s = x + gumbel(key, v)
            if s > best or (s == best and v < arg):
                best, arg = s, v
    arg = _argmax(fbuf, ibuf, best, arg)
    if t == 0:
        out[r] = arg


@cuda.jit(cache=True)
def _mask_kernel(logits, bitmask, out):  # pragma: no cover
    """out[r, v] = logits[r, v] where the bitmask allows token v, else -inf; one block per row."""
    r = cuda.blockIdx.x
    for v in range(cuda.threadIdx.x, logits.shape[1], cuda.blockDim.x):
        out[r, v] = logits[r, v] if allowed(bitmask, r, v) else -math.inf


def launch_mask(logits, bitmask, out, stream=0, threads=THREADS):
    """Launch `_mask_kernel` on arrays numba.cuda accepts (device arrays, or numpy in the simulator)."""
    _mask_kernel[logits.shape[0], threads, stream](logits, bitmask, out)


def mask_cuda(logits, bitmask):
    """torch CUDA tensors (checked by `tideflow.kernels.sampling.sample`) -> the masked copy of `logits`."""
    import torch

    from tideflow.kernels.cuda.interop import current_stream, device_array, on_device

    out = torch.empty_like(logits)
    with on_device(logits.device):
        launch_mask(device_array(logits), device_array(bitmask), device_array(out), stream=current_stream(logits.device))
    return out


def launch_sample(logits, temperature, top_k, top_p, min_p, seeds, counters, out, stream=0, threads=THREADS):
    """Launch on arrays numba.cuda accepts (device arrays, or numpy in the simulator), typed as
    `tideflow.kernels.sampling.sample` takes them. `threads`: a power of two <= THREADS."""
    _sample_kernel[logits.shape[0], threads, stream](logits, temperature, top_k, top_p, min_p, seeds, counters, out)


def sample_cuda(logits, temperature, top_k, top_p, min_p, seeds, counters, out) -> None:
    """torch CUDA tensors, already checked by `tideflow.kernels.sampling.sample`; writes `out`."""
    from tideflow.kernels.cuda.interop import current_stream, device_array, on_device

    arrays = [device_array(t) for t in (logits, temperature, top_k, top_p, min_p, seeds, counters, out)]
    with on_device(logits.device):
        launch_sample(*arrays, stream=current_stream(logits.device))
