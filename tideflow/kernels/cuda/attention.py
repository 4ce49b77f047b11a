"""Paged attention and KV-cache writes on CUDA, in numba.cuda; the torch references and the
checked entry points are the CPU siblings in `tideflow.kernels` (paged_decode, paged_prefill,
cache_write), which call the `*_cuda` functions here for CUDA tensors.

Decode attention reads the whole KV cache once per step, so it is bandwidth bound: the design
keeps every K/V byte read exactly once and coalesced.
- One thread block per (query tile, KV head, context partition). A query tile is one sequence's
  decode token, or up to `query_rows` consecutive prefill rows of one sequence; with the GQA
  group's heads that is `query_rows * group` query vectors, all served from one read of K/V.
- Keys are streamed in tiles of `key_tile` rows: the block copies a tile of K and V into shared
  memory with coalesced 32-bit loads (two 16-bit values per load), converts them to float32,
  scores every (query vector, key) pair, and folds the tile into a running max / sum / output
  (online softmax), so nothing of size [queries, context] is materialised.
- Short batches split the context into partitions (flash-decoding): each block writes a partial
  output with its max and sum, and a second kernel combines them, so a few long sequences still
  fill the GPU.
- Threads: `head_dim * slots`; thread (d, slot) owns output dimension d of query vectors slot,
  slot + slots, ..., so the V reads of a warp are consecutive and each accumulator is private.

numba.cuda has no bfloat16: bf16 tensors are viewed as int16 (single values) or int32 (pairs of
values) and converted by bit shifts; fp16 K/V pairs are converted from their bits too, while
fp16 queries and outputs use numba's float16. Everything accumulates in float32.

`launch_*` functions take any arrays numba.cuda accepts (the simulator's numpy arrays too) and
are what the tests run in NUMBA_ENABLE_CUDASIM=1; the `*_cuda` functions turn torch tensors into
such arrays and launch on torch's current stream. Kernels compile on first use, per dtype and
tile shape (closures over compile-time constants, which numba cannot cache on disk).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from numba import config as numba_config
from numba import cuda

from tideflow.kernels.cuda.device_math import dmax as _max
from tideflow.kernels.cuda.device_math import dmin as _min
from tideflow.kernels.cuda.interop import current_stream, device_array, on_device

KINDS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
_NEG_INF = np.float32(-np.inf)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_TWO_POW_112 = np.float32(2.0**112)  # fp16 -> fp32 exponent re-bias (2^(127-15))
_SHARED_FLOATS = 11 * 1024  # shared memory budget per block, in floats (44 KiB of the 48 KiB static limit)
_COPY_THREADS = 128  # threads per (token, KV head) row copy in reshape_and_cache
_MAX_HEAD_DIM = 256  # head_dim threads of up to ~200 registers each must fit an SM's 64K registers


# -- bit-level conversions ----------------------------------------------------------------------
if numba_config.ENABLE_CUDASIM:  # the simulator runs kernels as Python: reinterpret via numpy

    def _f32_from_bits(bits):
        return np.uint32(int(bits) & 0xFFFFFFFF).view(np.float32)

    def _bits_from_f32(x):
        return int(np.float32(x).view(np.uint32))

else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def _f32_from_bits(bits):  # pragma: no cover (device code)
        return libdevice.int_as_float(np.int32(bits))

    @cuda.jit(device=True)
    def _bits_from_f32(x):  # pragma: no cover (device code)
        return libdevice.float_as_int(x)


@cuda.jit(device=True)
def _half_to_f32(h):  # pragma: no cover (device code)
    """fp16 bits (low 16 bits of h) to float32, exact for normals, subnormals, inf and nan."""
    em = h & 0x7FFF
    mag = _f32_from_bits(em << 13) * _TWO_POW_112
    if em >= 0x7C00:  # inf / nan: the exponent stays all ones
        mag = _f32_from_bits((em << 13) | 0x7F800000)
    return -mag if h & 0x8000 else mag


@cuda.jit(device=True)
def _word_f32(word, j):  # pragma: no cover (device code)
    return word


@cuda.jit(device=True)
def _word_bf16(word, j):  # pragma: no cover (device code)
    """Value j of a little-endian pair of bf16 packed in an int32."""
    w = np.int64(word)
    return _f32_from_bits(w << 16) if j == 0 else _f32_from_bits(w & -65536)


@cuda.jit(device=True)
def _word_f16(word, j):  # pragma: no cover (device code)
    w = np.int64(word)
    return _half_to_f32(w & 0xFFFF) if j == 0 else _half_to_f32((w >> 16) & 0xFFFF)


@cuda.jit(device=True)
def _load_f32(x):  # pragma: no cover (device code)
    return x


@cuda.jit(device=True)
def _load_f16(x):  # pragma: no cover (device code)
    return np.float32(x)


@cuda.jit(device=True)
def _load_bf16(x):  # pragma: no cover (device code)
    return _f32_from_bits(np.int64(x) << 16)


@cuda.jit(device=True)
def _store_float(x):  # pragma: no cover (device code)
    """float32 and float16 outputs: the array store itself rounds."""
    return x


@cuda.jit(device=True)
def _store_bf16(x):  # pragma: no cover (device code)
    """float32 -> bf16 bits (round to nearest even), as the signed int16 the output view holds."""
    if x != x:
        return np.int64(0x7FC0)  # a quiet nan
    bits = np.int64(_bits_from_f32(x)) & 0xFFFFFFFF
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits - ((bits & 0x8000) << 1)


_UNPACK = {"f32": _word_f32, "f16": _word_f16, "bf16": _word_bf16}  # K/V word, index -> float32
_LOAD = {"f32": _load_f32, "f16": _load_f16, "bf16": _load_bf16}  # query element -> float32
_STORE = {"f32": _store_float, "f16": _store_float, "bf16": _store_bf16}  # float32 -> output element


# -- tile shapes ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TileShape:
    """How a thread block covers its work; every field is a compile-time constant of the kernel."""

    query_rows: int  # query tokens of one sequence per block (decode: 1)
    key_tile: int  # keys staged in shared memory per step
    slots: int  # threads per head dimension: a block has head_dim * slots threads

    def shared_floats(self, head_dim: int, group: int) -> int:
        """Floats of shared memory a block uses (queries, K and V tiles, scores)."""
        vectors = self.query_rows * group
        return vectors * head_dim + self.key_tile * (2 * head_dim + 1) + vectors * (self.key_tile + 4)


def tile_shape(head_dim: int, group: int, decode: bool) -> TileShape:
    """The default shape: about 128 threads; prefill tiles of as many query rows as keep the
    queries resident (<= 4096 floats), each thread's accumulators in registers (<= 32) and one
    query vector per thread at most; the largest key tile (<= 32) that fits the shared budget."""
    slots = max(1, min(16, 128 // head_dim))
    rows = 1 if decode else max(1, min(32 * slots, 4096 // head_dim, head_dim * slots) // group)
    for keys in (32, 16, 8, 4):
        shape = TileShape(rows, keys, slots)
        if shape.shared_floats(head_dim, group) <= _SHARED_FLOATS:
            return shape
    raise ValueError(f"attention: head_dim {head_dim} x group {group} does not fit a block's shared memory")


def split_context(span: int, blocks: int, key_tile: int, sm_count: int) -> tuple[int, int]:
    """(partitions, keys per partition) for a context of at most `span` keys when the grid has
    `blocks` blocks per partition: split until the grid is about four blocks per SM, each
    partition keeping at least four key tiles so the combine pass stays cheap."""
    tiles = max(1, -(-span // key_tile))
    want = max(1, min(-(-4 * sm_count // max(blocks, 1)), tiles // 4))
    per_part = -(-tiles // want)
    return -(-tiles // per_part), per_part * key_tile


# -- attention kernel -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _attention_kernel(kind: str, head_dim: int, group: int, shape: TileShape, decode: bool, split: bool):
    """Kernel for one dtype, head_dim, GQA group and tile shape. Grid: (query tiles, KV heads,
    partitions). `decode`: tile = sequence, one query at its last position, `cu` unread;
    else tiles of prefill rows found through `cu`. `split`: write partial outputs and their
    (max, sum) to `out` [rows, H, P, D] and `stats`; else the final output, `stats` unread.
    (Compile-time flags rather than None arguments: numba.cuda cannot launch with None.)

    Hot loops are `while` loops on purpose: numba lowers `range()` to an iterator NVVM cannot
    see through, which costs ~20 instructions per step of a dot product instead of two shared
    loads and an FMA. Constant-count `range()` loops over registers are fully unrolled and fine.
    """
    dim, rows_per_tile, keys, slots = head_dim, shape.query_rows, shape.key_tile, shape.slots
    pack = 1 if kind == "f32" else 2
    words = dim // pack  # 32-bit words per K/V row of one head
    word_type = np.float32 if kind == "f32" else np.int32
    threads = dim * slots
    vectors = rows_per_tile * group  # query vectors per block, (row, head in group) row-major
    owned = -(-vectors // slots)  # query vectors each thread accumulates
    key_step = threads // words  # thread t copies word t % words of keys t // words + c * key_step
    copies = keys // key_step  # words each thread copies per K or V tile
    pairs = -(-(vectors * keys) // threads)  # scores each thread computes per tile
    if vectors > threads or keys > threads or keys % key_step:
        raise ValueError(f"attention: tile {shape} does not fit head_dim {dim} x group {group}")
    k_cols, s_cols = dim + 1, keys + 1  # padded rows (shared array shapes must be plain constants)
    unpack, load, store = _UNPACK[kind], _LOAD[kind], _STORE[kind]

    @cuda.jit(device=True)
    def stage(flat, base, tile, tid):  # pragma: no cover (device code)
        """Copy this thread's words of a K or V tile into float32 rows of `tile`: every load is
        issued before the first conversion, so a warp keeps `copies` loads in flight."""
        regs = cuda.local.array(copies, word_type)
        col, r0 = tid % words, tid // words
        for c in range(copies):
            regs[c] = flat[np.uint64(base[r0 + c * key_step] + col)]  # unsigned: no wraparound code
        for c in range(copies):
            for j in range(pack):
                tile[r0 + c * key_step, col * pack + j] = unpack(regs[c], j)

    @cuda.jit
    def kernel(  # pragma: no cover (device code)
        q, k_flat, v_flat, tables, ctx, cu, scale, window, part_size, block_size, out, stats
    ):
        tid = cuda.threadIdx.x
        kh, part = cuda.blockIdx.y, cuda.blockIdx.z
        if decode:
            b, row0, q0, q_len = cuda.blockIdx.x, 0, cuda.blockIdx.x, 1
        else:  # tile j of the grid belongs to the last sequence b with cu[b] // R + b <= j
            j = cuda.blockIdx.x
            lo_b, hi_b = 0, ctx.shape[0]
            while hi_b - lo_b > 1:
                mid = (lo_b + hi_b) // 2
                if cu[mid] // rows_per_tile + mid <= j:
                    lo_b = mid
                else:
                    hi_b = mid
            b, q0 = lo_b, cu[lo_b]
            q_len = cu[lo_b + 1] - q0
            row0 = (j - q0 // rows_per_tile - lo_b) * rows_per_tile
            if row0 >= q_len:
                return  # a gap tile between sequences (the grid is an upper bound)
        rows = _min(rows_per_tile, q_len - row0)
        first_pos = ctx[b] - q_len + row0  # position of the block's first query row
        lo = 0 if window <= 0 else _max(0, first_pos - window + 1)
        start = lo + part * part_size
        stop = _min(first_pos + rows, start + part_size)
        slot_words = cuda.gridDim.y * words  # words per cache slot (grid y = KV heads)

        qs = cuda.shared.array((vectors, dim), np.float32)  # queries, pre-scaled
        ks = cuda.shared.array((keys, k_cols), np.float32)  # padded: threads on different keys, different banks
        vs = cuda.shared.array((keys, dim), np.float32)
        sc = cuda.shared.array((vectors, s_cols), np.float32)  # padded too; scores, then probabilities
        base = cuda.shared.array(keys, np.int64)  # flat word index of each staged key's row
        m_run = cuda.shared.array(vectors, np.float32)  # running max, sum and this tile's rescale
        l_run = cuda.shared.array(vectors, np.float32)
        alpha = cuda.shared.array(vectors, np.float32)
        acc = cuda.local.array(owned, np.float32)

        sc32 = np.float32(scale)
        for i in range(tid, vectors * dim, threads):
            v, d = i // dim, i % dim
            r = _min(v // group, rows - 1)  # rows past the sequence's end load a real row, never written
            qs[v, d] = load(q[q0 + row0 + r, kh * group + v % group, d]) * sc32
        if tid < vectors:
            m_run[tid] = _NEG_INF
            l_run[tid] = _ZERO
        d, slot = tid % dim, tid // dim
        for k in range(owned):
            acc[k] = _ZERO

        for t0 in range(start, stop, keys):
            n = _min(keys, stop - t0)
            if tid < keys:  # keys past the range re-read the last one
                pos = t0 + _min(tid, n - 1)
                base[tid] = (tables[b, pos // block_size] * block_size + pos % block_size) * slot_words + kh * words
            cuda.syncthreads()
            stage(k_flat, base, ks, tid)
            stage(v_flat, base, vs, tid)
            cuda.syncthreads()
            p = 0
            while p < pairs:  # scores, key-fastest: a warp shares one query vector
                i = tid + p * threads
                if i < vectors * keys:
                    v, r = i // keys, i % keys
                    q_pos, k_pos = first_pos + v // group, t0 + r
                    s = _NEG_INF
                    if r < n and v // group < rows and k_pos <= q_pos and (window <= 0 or k_pos > q_pos - window):
                        s = _ZERO
                        e = 0
                        while e < dim:
                            s += qs[v, e] * ks[r, e]
                            e += 1
                    sc[v, r] = s
                p += 1
            cuda.syncthreads()
            if tid < vectors:
                m_old = m_run[tid]
                m_new = m_old
                r = 0
                while r < keys:
                    m_new = _max(m_new, sc[tid, r])
                    r += 1
                alpha[tid] = _ONE if m_new == _NEG_INF else math.exp(m_old - m_new)
                m_run[tid] = m_new
            cuda.syncthreads()
            p = 0
            while p < pairs:
                i = tid + p * threads
                if i < vectors * keys:
                    v, r = i // keys, i % keys
                    x = sc[v, r]
                    sc[v, r] = _ZERO if x == _NEG_INF else math.exp(x - m_run[v])
                p += 1
            cuda.syncthreads()
            if tid < vectors:
                total = _ZERO
                r = 0
                while r < keys:
                    total += sc[tid, r]
                    r += 1
                l_run[tid] = l_run[tid] * alpha[tid] + total
            for k in range(owned):
                v = slot + k * slots
                if v < vectors:
                    acc[k] *= alpha[v]
            r = 0
            while r < n:
                x = vs[r, d]
                for k in range(owned):
                    v = slot + k * slots
                    if v < vectors:
                        acc[k] += sc[v, r] * x
                r += 1
        cuda.syncthreads()

        for k in range(owned):
            v = slot + k * slots
            if v < vectors and v // group < rows:
                row, h = q0 + row0 + v // group, kh * group + v % group
                total = l_run[v]
                if not split:
                    out[row, h, d] = store(acc[k] / total)
                else:
                    out[row, h, part, d] = acc[k] / total if total > _ZERO else _ZERO
                    if d == 0:
                        stats[row, h, part, 0] = m_run[v]
                        stats[row, h, part, 1] = total

    return kernel


@functools.lru_cache(maxsize=None)
def _combine_kernel(kind: str):
    """Grid (query rows, heads), head_dim threads: merge partition outputs by their max and sum."""
    store = _STORE[kind]

    @cuda.jit
    def combine(parts, stats, out):  # pragma: no cover (device code)
        row, h, d = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
        top = _NEG_INF
        for p in range(parts.shape[2]):
            top = _max(top, stats[row, h, p, 0])
        num, den = _ZERO, _ZERO
        for p in range(parts.shape[2]):
            weight = stats[row, h, p, 1]
            if weight > _ZERO:
                weight *= math.exp(stats[row, h, p, 0] - top)
                num += weight * parts[row, h, p, d]
                den += weight
        out[row, h, d] = store(num / den)

    return combine


def launch_attention(
    q, k_words, v_words, block_tables, context_lens, cu_seqlens, out, scratch, *,
    kind: str, group: int, scale: float, window: int, shape: TileShape, part_size: int, stream=0,
) -> None:
    """Launch paged attention on device arrays (no checks: the `*_cuda` wrappers check).

    q [rows, H, D] (bf16 as int16); k/v_words [blocks, block_size, Hkv, D / pack] (32-bit words:
    float32, or int32 pairs of 16-bit values); cu_seqlens None for decode (row b = sequence b);
    out [rows, H, D] in q's element type. scratch: None for one partition, else (parts
    [rows, H, P, D] float32, stats [rows, H, P, 2] float32) combined into out afterwards.
    """
    seqs, kv_heads = context_lens.shape[0], k_words.shape[2]
    head_dim = q.shape[2]
    decode, split = cu_seqlens is None, scratch is not None
    tiles = seqs if decode else q.shape[0] // shape.query_rows + seqs
    partitions = scratch[0].shape[2] if split else 1
    kernel = _attention_kernel(kind, head_dim, group, shape, decode, split)
    cu = context_lens if decode else cu_seqlens  # decode kernels never read it
    dst, stats = scratch if split else (out, context_lens)  # one-partition kernels never read stats
    kernel[(tiles, kv_heads, partitions), head_dim * shape.slots, stream](
        q, k_words.reshape(k_words.size), v_words.reshape(v_words.size), block_tables, context_lens, cu,
        scale, window, part_size, k_words.shape[1], dst, stats,
    )
    if split:
        _combine_kernel(kind)[(q.shape[0], q.shape[1]), head_dim, stream](scratch[0], scratch[1], out)


# -- reshape_and_cache ---------------------------------------------------------------------------
@cuda.jit
def _cache_write_kernel(k_words, v_words, k_cache, v_cache, slot_mapping):  # pragma: no cover
    """Grid (tokens, KV heads): block (t, h) copies row h of token t to its slot, coalesced."""
    t, h = cuda.blockIdx.x, cuda.blockIdx.y
    slot = slot_mapping[t]
    if slot < 0:
        return
    for c in range(cuda.threadIdx.x, k_words.shape[2], cuda.blockDim.x):
        k_cache[slot, h, c] = k_words[t, h, c]
        v_cache[slot, h, c] = v_words[t, h, c]


def launch_cache_write(k_words, v_words, k_cache, v_cache, slot_mapping, stream=0) -> None:
    """Copy 32-bit words [T, Hkv, W] into caches [slots, Hkv, W]; negative slots skip their row."""
    if k_words.shape[0]:
        threads = min(_COPY_THREADS, k_words.shape[2])
        _cache_write_kernel[(k_words.shape[0], k_words.shape[1]), threads, stream](
            k_words, v_words, k_cache, v_cache, slot_mapping
        )


# -- torch entry points --------------------------------------------------------------------------
def _kind(name: str, t: torch.Tensor) -> str:
    if t.dtype not in KINDS:
        raise ValueError(f"{name}: CUDA kernels take {', '.join(map(str, KINDS))}, got {t.dtype}")
    if t.dtype != torch.float32 and t.shape[-1] % 2:
        raise ValueError(f"{name}: 16-bit K/V rows are read in pairs, head_dim {t.shape[-1]} must be even")
    return KINDS[t.dtype]


def _words(t: torch.Tensor):
    """K/V as 32-bit words: float32 as is, 16-bit values as int32 pairs (last dim halves)."""
    return device_array(t if t.dtype == torch.float32 else t.view(torch.int32))


def _elements(t: torch.Tensor):
    """q / out elements numba can index: bf16 as its int16 bits."""
    return device_array(t.view(torch.int16) if t.dtype == torch.bfloat16 else t)


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _attend(name, q, k_blocks, v_blocks, block_tables, context_lens, cu_seqlens, scale, window, out):
    """Shared body of the decode (cu_seqlens None) and prefill entry points."""
    kind = _kind(name, q)
    rows, heads, head_dim = q.shape
    if head_dim > _MAX_HEAD_DIM:
        raise ValueError(f"{name}: the CUDA kernel takes head_dim up to {_MAX_HEAD_DIM}, got {head_dim}")
    kv_heads = k_blocks.shape[2]
    group = heads // kv_heads
    shape = tile_shape(head_dim, group, decode=cu_seqlens is None)
    tiles = rows if cu_seqlens is None else rows // shape.query_rows + block_tables.shape[0]
    span = block_tables.shape[1] * k_blocks.shape[1]  # keys a query tile may see, known without a sync
    if window > 0:
        span = min(span, window + shape.query_rows - 1)
    partitions, part_size = split_context(span, tiles * kv_heads, shape.key_tile, _sm_count(q.device))
    if out is None:
        out = torch.empty_like(q)
    scratch = None
    if partitions > 1:
        parts = torch.empty(rows, heads, partitions, head_dim, device=q.device, dtype=torch.float32)
        stats = torch.empty(rows, heads, partitions, 2, device=q.device, dtype=torch.float32)
        scratch = (device_array(parts), device_array(stats))
    with on_device(q.device):
        launch_attention(
            _elements(q), _words(k_blocks), _words(v_blocks), device_array(block_tables), device_array(context_lens),
            None if cu_seqlens is None else device_array(cu_seqlens), _elements(out), scratch,
            kind=kind, group=group, scale=float(scale), window=int(window), shape=shape, part_size=part_size,
            stream=current_stream(q.device),
        )
    return out


def paged_decode_cuda(q, k_blocks, v_blocks, block_tables, context_lens, scale: float, window: int = 0, out=None):
    """Decode attention for CUDA tensors, called by the checked `paged_decode` (which validates
    shapes, devices and index dtypes; here only what the GPU adds: dtype, even head_dim).
    Every context length must be >= 1. Returns [B, H, D] (`out` if given)."""
    return _attend("paged_decode", q, k_blocks, v_blocks, block_tables, context_lens, None, scale, window, out)


def paged_prefill_cuda(
    q, k_blocks, v_blocks, block_tables, cu_seqlens_q, context_lens, scale: float, window: int = 0, out=None
):
    """Prefill attention for CUDA tensors, called by the checked `paged_prefill`. The device
    values are not read back (the step stays free of host syncs), so the caller guarantees what
    the CPU path checks: cu_seqlens_q rises from 0 to T and context_lens[b] >= q_len_b.
    Returns [T, H, D] (`out` if given)."""
    return _attend("paged_prefill", q, k_blocks, v_blocks, block_tables, context_lens, cu_seqlens_q, scale, window, out)


def reshape_and_cache_cuda(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Cache write for CUDA tensors, called by the checked `reshape_and_cache`. k, v [T, Hkv, D]
    may be strided views (e.g. of a fused QKV output) as long as each head's row is contiguous;
    caches [slots, Hkv, D] contiguous."""
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("reshape_and_cache: each head's K/V row must be contiguous")
    _kind("reshape_and_cache", k)
    k_words, v_words, k_cache_words, v_cache_words = (
        device_array(t.view(torch.int32)) for t in (k, v, k_cache, v_cache)  # any dtype moves as 32-bit words
    )
    with on_device(k.device):
        launch_cache_write(
            k_words, v_words, k_cache_words, v_cache_words, device_array(slot_mapping), stream=current_stream(k.device)
        )
