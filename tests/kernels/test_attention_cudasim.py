"""The numba.cuda attention kernels in numba's CUDA simulator, against the torch references: CI
has no GPU, so this is where their logic is checked (key tiles, query tiles and gap tiles,
context partitions and their combine, GQA, sliding windows, bf16/fp16 bit conversions).

The simulator must be switched on before numba is imported, so the cases run in subprocesses
(`python -m tests.kernels.test_attention_cudasim SEED SHARD SHARDS`, two at once, each taking
every other case) that print one JSON line per case.
Shapes are tiny because the simulator runs every thread in Python. Block table entries the
kernels must never read (past the context, or wholly before the sliding window, i.e. freed)
hold an out-of-range block id in the kernels' copy, so reading one raises in the simulator.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from tideflow.kernels.cache_write import reshape_and_cache_ref
from tideflow.kernels.paged_decode import paged_decode_ref
from tideflow.kernels.paged_prefill import paged_prefill_ref

ROOT = pathlib.Path(__file__).resolve().parents[2]
KV_HEADS, HEAD_DIM, BLOCK_SIZE, NUM_BLOCKS = 2, 8, 4, 24
UNUSED = 10**6  # block id of table entries the kernels must not read
TORCH_KINDS = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {"f32": 2e-6, "f16": 2e-3, "bf16": 1e-2}  # f32: relative to the float64 reference

# name -> (kind, gqa, window, partitions, query rows per tile (None: decode), threads per head dim)
ATTENTION_CASES = {
    "decode_f32_mha": ("f32", 1, 0, 1, None, 1),
    "decode_f32_gqa2_split": ("f32", 2, 0, 3, None, 2),
    "decode_f32_gqa4_window": ("f32", 4, 5, 1, None, 1),
    "decode_f32_gqa8_window_split": ("f32", 8, 6, 2, None, 2),
    "decode_bf16_gqa2_split": ("bf16", 2, 0, 2, None, 1),
    "decode_f16_gqa2": ("f16", 2, 0, 1, None, 2),
    "prefill_f32_gqa2": ("f32", 2, 0, 1, 2, 1),
    "prefill_f32_gqa2_window_split": ("f32", 2, 3, 2, 3, 2),
    "prefill_f32_mha_rows1": ("f32", 1, 0, 1, 1, 1),
    "prefill_bf16_gqa4_window": ("bf16", 4, 4, 1, 2, 1),
}
CACHE_CASES = ("cache_write_f32", "cache_write_bf16")
BIT_CASES = ("fp16_bits_to_f32", "f32_to_bf16_bits")
ENTRY_CASES = ("entry_points_bf16",)


def _tables(rng, context: np.ndarray, needed_from: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Random block tables with a shared prefix: (the references' copy, with -1 where a block
    is freed, and the kernels' copy with UNUSED wherever the kernels must not read)."""
    width = int(-(-context.max() // BLOCK_SIZE)) + 1
    tables = np.stack([rng.permutation(NUM_BLOCKS)[:width] for _ in context])
    tables[1, :1] = tables[2, :1]  # sequences 1 and 2 share their first block
    index = np.arange(width)[None, :]
    freed = (index + 1) * BLOCK_SIZE <= needed_from[:, None]
    unused = freed | (index * BLOCK_SIZE >= context[:, None])
    return torch.from_numpy(np.where(freed, -1, tables)), np.where(unused, UNUSED, tables)


def _elements(t: torch.Tensor) -> np.ndarray:
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def _words(t: torch.Tensor) -> np.ndarray:
    return (t if t.dtype == torch.float32 else t.view(torch.int32)).numpy()


def _attention_case(A, rng, kind, gqa, window, partitions, rows, slots):
    """Run one attention case through `launch_attention`; returns the max relative error."""
    dtype = TORCH_KINDS[kind]
    decode = rows is None
    seqs = 3
    context = rng.integers(5, 12, seqs)  # 5..11 tokens: mostly not a multiple of the block size
    # prefill: a fresh prompt, a one-token chunk, a 4-token chunk after a cached prefix
    q_lens = np.ones(seqs, dtype=np.int64) if decode else np.minimum(context, [context[0], 1, 4])
    total = int(q_lens.sum())
    first_pos = context - q_lens
    needed_from = first_pos - window + 1 if window else np.zeros(seqs, dtype=np.int64)
    ref_tables, tables = _tables(rng, context, needed_from)
    shape = (NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    k, v = (torch.from_numpy(rng.standard_normal(shape)).to(dtype) for _ in range(2))
    q = torch.from_numpy(rng.standard_normal((total, KV_HEADS * gqa, HEAD_DIM))).to(dtype)
    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(q_lens)]))
    ctx = torch.from_numpy(context)
    scale = HEAD_DIM**-0.5

    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    tile = A.TileShape(query_rows=1 if decode else rows, key_tile=4, slots=slots)
    span = int(tables.shape[1] * BLOCK_SIZE if not window else window + tile.query_rows - 1)
    part_size = -(-span // (partitions * tile.key_tile)) * tile.key_tile
    scratch = None
    if partitions > 1:
        scratch = (np.full((total, q.shape[1], partitions, HEAD_DIM), np.nan, np.float32),
                   np.full((total, q.shape[1], partitions, 2), np.nan, np.float32))
    out_np = _elements(out)
    A.launch_attention(
        _elements(q), _words(k), _words(v), tables, context, None if decode else cu.numpy(), out_np, scratch,
        kind=kind, group=gqa, scale=scale, window=window, shape=tile, part_size=part_size,
    )
    got = torch.from_numpy(out_np).view(dtype).double()
    exact = (q.double(), k.double(), v.double(), ref_tables)
    if decode:
        expected = paged_decode_ref(*exact, ctx, scale, window)
    else:
        expected = paged_prefill_ref(*exact, cu, ctx, scale, window)
    if torch.isnan(got).any():
        return float("inf")
    return float(((got - expected).abs() / (expected.abs() + 1)).max())


def _cache_case(A, rng, kind):
    """`launch_cache_write` on strided rows (a slice of a fused QKV) with skipped slots; bit-exact."""
    dtype = TORCH_KINDS[kind]
    tokens, slots = 7, NUM_BLOCKS * BLOCK_SIZE
    fused = torch.from_numpy(rng.standard_normal((tokens, 3 * KV_HEADS, HEAD_DIM))).to(dtype)
    k, v = fused[:, KV_HEADS : 2 * KV_HEADS], fused[:, 2 * KV_HEADS :]
    slot_mapping = torch.from_numpy(rng.permutation(slots)[:tokens].astype(np.int64))
    slot_mapping[[1, 4]] = -1  # padding rows
    k_cache = torch.from_numpy(rng.standard_normal((slots, KV_HEADS, HEAD_DIM))).to(dtype)
    v_cache = torch.from_numpy(rng.standard_normal((slots, KV_HEADS, HEAD_DIM))).to(dtype)
    k_want, v_want = k_cache.clone(), v_cache.clone()
    reshape_and_cache_ref(k, v, k_want, v_want, slot_mapping)
    from numba import cuda

    fused_words = cuda.to_device(fused.view(torch.int32).numpy())  # strided views live on the device
    caches = [cuda.to_device(c.view(torch.int32).numpy()) for c in (k_cache, v_cache)]
    A.launch_cache_write(
        fused_words[:, KV_HEADS : 2 * KV_HEADS], fused_words[:, 2 * KV_HEADS :], *caches, slot_mapping.numpy()
    )
    for dev, host in zip(caches, (k_cache, v_cache)):
        host.view(torch.int32).numpy()[...] = dev.copy_to_host()
    return float(not (torch.equal(k_cache, k_want) and torch.equal(v_cache, v_want)))


def _bits_case(A, rng, name):
    """The bit-level conversions on their edge cases, bit for bit: fp16 patterns (every zero,
    subnormal, inf and nan, and random normals) to float32 against numpy, and float32 -> bf16
    rounding (ties to even, overflow to inf, nan) against torch. Returns the mismatch count."""
    if name == "fp16_bits_to_f32":
        every = np.arange(1 << 16, dtype=np.int64)
        edge = (every & 0x7C00 == 0) | (every & 0x7C00 == 0x7C00)  # zeros, subnormals, inf, nan
        bits = np.concatenate([every[edge], rng.choice(every[~edge], 4096, replace=False)])
        want = bits.astype(np.uint16).view(np.float16).astype(np.float32)
        got = np.array([A._half_to_f32(b) for b in bits], dtype=np.float32)
        return float(((got.view(np.uint32) != want.view(np.uint32)) & ~(np.isnan(got) & np.isnan(want))).sum())
    x = rng.standard_normal(4096).astype(np.float32) * np.float32(10.0) ** rng.integers(-40, 39, 4096)
    x[:6] = [np.inf, -np.inf, np.nan, 3.389e38, 1.00390625, 1.01171875]  # overflow, halfway ties
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy()
    got = np.array([A._store_bf16(v) for v in x], dtype=np.int16)
    nan = np.isnan(x)  # any nan pattern will do (torch's differs from the kernel's quiet nan)
    return float(((got != want) & ~nan).sum() + ((got & 0x7F80) != 0x7F80)[nan].sum() + ((got & 0x7F) == 0)[nan].sum())


def _entry_points_case(A, rng):
    """The torch entry points' own work (dtype views, launch arguments) on host tensors: the
    simulator has no CUDA arrays, so the torch <-> numba interop is replaced by numpy views.
    Returns the max error of a cache write, then decode and prefill over it, in bf16."""
    import contextlib

    A.device_array = lambda t: t.detach().numpy()
    A.on_device = lambda device: contextlib.nullcontext()
    A.current_stream = lambda device: 0
    A._sm_count = lambda device: 132
    A.tile_shape = lambda head_dim, group, decode: A.TileShape(1 if decode else 2, 4, 1)  # few threads to simulate
    dtype, gqa, scale = torch.bfloat16, 2, 0.3
    context = rng.integers(5, 12, 3)
    q_lens = np.minimum(context, [context[0], 1, 4])
    ref_tables, tables = _tables(rng, context, np.zeros(3, dtype=np.int64))
    tables, ctx = torch.from_numpy(tables), torch.from_numpy(context)
    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(q_lens)]))
    shape = (NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    k = torch.zeros(shape, dtype=dtype)
    v = torch.zeros(shape, dtype=dtype)
    rows = torch.from_numpy(rng.standard_normal((2, int(context.sum()), KV_HEADS, HEAD_DIM))).to(dtype)
    positions = [torch.arange(int(n)) for n in context]
    slots = torch.cat([ref_tables[b, i // BLOCK_SIZE] * BLOCK_SIZE + i % BLOCK_SIZE for b, i in enumerate(positions)])
    A.reshape_and_cache_cuda(rows[0], rows[1], k.view(-1, KV_HEADS, HEAD_DIM), v.view(-1, KV_HEADS, HEAD_DIM), slots)
    k_want, v_want = torch.zeros_like(k), torch.zeros_like(v)
    flat = (k_want.view(-1, KV_HEADS, HEAD_DIM), v_want.view(-1, KV_HEADS, HEAD_DIM))
    reshape_and_cache_ref(rows[0], rows[1], *flat, slots)
    errors = [float(not (torch.equal(k, k_want) and torch.equal(v, v_want)))]
    exact = (k.float(), v.float(), ref_tables)
    q = torch.from_numpy(rng.standard_normal((3, KV_HEADS * gqa, HEAD_DIM))).to(dtype)
    got = A.paged_decode_cuda(q, k, v, tables, ctx, scale, out=torch.full_like(q, float("nan")))
    errors.append(float((got.float() - paged_decode_ref(q.float(), *exact, ctx, scale)).abs().max()))
    q = torch.from_numpy(rng.standard_normal((int(q_lens.sum()), KV_HEADS * gqa, HEAD_DIM))).to(dtype)
    got = A.paged_prefill_cuda(q, k, v, tables, cu, ctx, scale, out=torch.full_like(q, float("nan")))
    errors.append(float((got.float() - paged_prefill_ref(q.float(), *exact, cu, ctx, scale)).abs().max()))
    return max(errors)


def _cases(A, rng) -> list[tuple[str, object]]:
    """(name, thunk -> (error, tolerance)) for every case, in a fixed order."""
    cases = [(name, lambda case=case: (_attention_case(A, rng, *case), TOLERANCE[case[0]]))
             for name, case in ATTENTION_CASES.items()]
    cases += [(name, lambda name=name: (_cache_case(A, rng, name.rsplit("_", 1)[1]), 0.0)) for name in CACHE_CASES]
    cases += [(name, lambda name=name: (_bits_case(A, rng, name), 0.0)) for name in BIT_CASES]
    cases.append(("entry_points_bf16", lambda: (_entry_points_case(A, rng), 1e-2)))
    return cases


def _main(seed: int, shard: int, shards: int) -> None:
    """Run every `shards`-th case from `shard` on, printing one JSON line per case."""
    from numba import config

    assert config.ENABLE_CUDASIM, "run with NUMBA_ENABLE_CUDASIM=1"
    from tideflow.kernels.cuda import attention as A

    rng = np.random.default_rng([seed, shard])
    for name, run in _cases(A, rng)[shard::shards]:
        error, tol = run()
        print(json.dumps({"case": name, "error": error, "tol": tol}), flush=True)


SHARDS = 2  # subprocesses at once: the simulator runs every thread in Python on one core


@pytest.fixture(scope="module")
def simulated():
    seed = int(np.random.default_rng().integers(2**31))  # fresh inputs every run
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.kernels.test_attention_cudasim", str(seed), str(i), str(SHARDS)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(SHARDS)
    ]
    results = {}
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"seed {seed}:\n{err[-4000:]}"
        results.update((r["case"], r) for r in map(json.loads, out.splitlines()))
    return seed, results


@pytest.mark.parametrize("case", [*ATTENTION_CASES, *CACHE_CASES, *BIT_CASES, *ENTRY_CASES])
def test_kernel_matches_reference_in_simulator(simulated, case):
    seed, results = simulated
    result = results[case]
    assert result["error"] <= result["tol"], f"seed {seed}: {result}"


def test_default_tile_shapes_build_and_split_targets_the_sms():
    """Every default shape passes the kernel factory's fit checks (building a kernel compiles
    nothing, so this runs without a GPU)."""
    from tideflow.kernels.cuda.attention import _attention_kernel, split_context, tile_shape

    for head_dim in (8, 16, 32, 64, 80, 96, 128, 256):
        for group in (1, 2, 4, 8, 16):
            for decode in (True, False):
                for kind in ("f32", "bf16"):
                    _attention_kernel(kind, head_dim, group, tile_shape(head_dim, group, decode), decode, False)
    assert split_context(1024, 256, 32, 132) == (3, 352)  # 32 x 8 blocks: split to ~4 blocks per SM
    assert split_context(100, 8, 32, 132) == (1, 128)  # short: one partition
    assert split_context(64 * 1024, 4096, 32, 132) == (1, 64 * 1024)  # a full grid already


if __name__ == "__main__":
    _main(*map(int, sys.argv[1:4]))
