"""The numba.cuda sampling, MoE and Arrow-pack kernels in numba's CUDA simulator, against the
torch references: CI has no GPU, so this is where the device code's logic is checked.

The simulator must be on before numba is imported, so each kernel family runs in its own
subprocess (`python -m tests.kernels.test_cudasim_kernels FAMILY SEED`, all started at once) that calls the
`launch_*` functions on tiny numpy inputs with poisoned outputs and prints one JSON line per
check. Shapes are tiny: the simulator runs every GPU thread as a Python thread.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from numba import cuda, float64

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _sampling_rows(rng) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rows that hit every branch: ties at the top under top-k, a top-p cut inside a run of equal
    logits, suppressed tokens, min-p, and no filter at all."""
    rows, vocab = 7, 40
    logits = torch.from_numpy(rng.standard_normal((rows, vocab)) * rng.uniform(0.5, 4.0, (rows, 1))).float()
    logits[1, 5:9] = logits[1].max() + 1  # four tied top tokens, top_k=3: the lowest three ids stay
    logits[2] = -5.0
    logits[2, :6] = torch.tensor([5.0, 3.0, 3.0, 3.0, 3.0, 1.0])
    logits[3, :30] = float("-inf")
    probs = torch.softmax(logits[2].double(), -1)
    top_p_cut = float(probs[0] + 1.5 * probs[1])  # the cut falls after the second of the four 3.0s
    params = dict(
        temperature=torch.from_numpy(np.r_[rng.uniform(0.3, 1.5, 2), 1.0, rng.uniform(0.3, 1.5, rows - 3)]),
        top_k=torch.tensor([0, 3, 0, 12, 5, 0, 45]),
        top_p=torch.tensor([1.0, 0.9, top_p_cut, 0.5, 0.3, 0.7, 0.95], dtype=torch.float64),
        min_p=torch.tensor([0.0, 0.0, 0.0, 0.1, 0.0, 0.2, 0.05], dtype=torch.float64),
        seeds=torch.from_numpy(rng.integers(-(2**63), 2**63 - 1, rows, dtype=np.int64)),
        counters=torch.from_numpy(rng.integers(0, 1000, rows, dtype=np.int64)),
    )
    return logits, params


def _sampling(rng) -> dict[str, bool]:
    from tideflow.kernels.cuda.sampling import THREADS, _filters, _kept, launch_mask, launch_sample
    from tideflow.kernels.sampling import kept_ref, mask_ref, sample_ref

    @cuda.jit  # `cuda` must be a module global: the simulator swaps it there
    def kept_kernel(logits, temperature, top_k, top_p, min_p, kept):
        fbuf = cuda.shared.array(THREADS, float64)
        gbuf = cuda.shared.array(THREADS, float64)  # own line: the simulator keys shared arrays by line
        r = cuda.blockIdx.x
        sets = _filters(logits, r, temperature[r], top_k[r], top_p[r], min_p[r], fbuf, gbuf)
        for v in range(cuda.threadIdx.x, logits.shape[1], cuda.blockDim.x):
            kept[r, v] = _kept(logits[r, v] / temperature[r], v, min_p[r], *sets)

    logits, params = _sampling_rows(rng)
    filters = [params[name] for name in ("temperature", "top_k", "top_p", "min_p")]
    kept = np.full(logits.shape, 7, dtype=np.int8)  # poisoned
    kept_kernel[logits.shape[0], 8](logits.numpy(), *(t.numpy() for t in filters), kept)
    out = np.full(logits.shape[0], -7, dtype=np.int64)
    launch_sample(logits.numpy(), *(t.numpy() for t in params.values()), out, threads=8)
    want_kept = kept_ref(logits, *filters).numpy()
    # a grammar's bitmask: random words, row 0 allowing token 35 alone, row 3 (ids below 30 at
    # -inf) one allowed token past them; cut to one word, ids from 32 up are never allowed
    bitmask = torch.from_numpy(rng.integers(-(2**31), 2**31, (logits.shape[0], 2), dtype=np.int64).astype(np.int32))
    bitmask[0] = torch.tensor([0, 1 << 3], dtype=torch.int32)
    bitmask[3, 1] |= 1
    one_word = bitmask[:, :1].contiguous()
    masked_short = np.full(logits.shape, 7.0, dtype=np.float32)  # poisoned
    launch_mask(logits.numpy(), one_word.numpy(), masked_short, threads=8)
    masked = np.full(logits.shape, 7.0, dtype=np.float32)
    launch_mask(logits.numpy(), bitmask.numpy(), masked, threads=8)
    out_masked = np.full(logits.shape[0], -7, dtype=np.int64)
    launch_sample(masked, *(t.numpy() for t in params.values()), out_masked, threads=8)
    return {
        "kept_sets": np.array_equal(kept, want_kept) and bool(want_kept[2, :3].all()) and not want_kept[2, 3:].any(),
        "sample": np.array_equal(out, sample_ref(logits, *params.values()).numpy()),
        "mask": np.array_equal(masked_short, mask_ref(logits, one_word).numpy())
        and bool(np.isneginf(masked_short[:, 32:]).all()) and np.array_equal(masked, mask_ref(logits, bitmask).numpy()),
        "masked_sample": np.array_equal(out_masked, sample_ref(logits, *params.values(), bitmask=bitmask).numpy())
        and int(out_masked[0]) == 35,
    }


def _moe(rng) -> dict[str, bool]:
    from tideflow.kernels.cuda.moe import THREADS, launch_combine, launch_permute, launch_route
    from tideflow.kernels.moe import combine_ref, permute_ref, route_ref

    tokens, num_experts, top_k, width = 150, 6, 2, 3  # 300 assignments: two counting-sort chunks
    logits = rng.standard_normal((tokens, num_experts))
    weights, experts = np.full((tokens, top_k), np.nan), np.full((tokens, top_k), -9, dtype=np.int64)
    launch_route(logits, True, weights, experts)
    want_w, want_e = route_ref(torch.from_numpy(logits), top_k, True)
    hidden = rng.standard_normal((tokens, width))
    want_rows, plan = permute_ref(torch.from_numpy(hidden), want_e, num_experts)
    offsets, source = np.full(num_experts + 1, -1, dtype=np.int64), np.full(tokens * top_k, -1, dtype=np.int64)
    dest, rows = np.full((tokens, top_k), -1, dtype=np.int64), np.full((tokens * top_k, width), np.nan)
    scratch = np.empty(tokens * top_k, dtype=np.int64), np.zeros((-(-tokens * top_k // THREADS), num_experts), dtype=np.int64)
    launch_permute(hidden, want_e.numpy(), num_experts, offsets, source, dest, rows, *scratch)
    expert_out = rng.standard_normal((tokens * top_k, width))
    out = np.full((tokens, width), np.nan)
    launch_combine(expert_out, plan.dest.numpy(), want_w.numpy(), out)
    want_out = combine_ref(torch.from_numpy(expert_out), plan, want_w).numpy()
    return {
        "route": np.array_equal(experts, want_e.numpy()) and np.allclose(weights, want_w.numpy(), rtol=1e-12, atol=0),
        "permute": all(np.array_equal(a, b) for a, b in ((offsets, plan.offsets), (source, plan.source), (dest, plan.dest))),
        "gather": np.array_equal(rows, want_rows.numpy()),
        "combine": np.allclose(out, want_out, rtol=1e-12, atol=1e-12),
    }


def _arrow_pack(rng) -> dict[str, bool]:
    import pyarrow as pa

    from tideflow.kernels.arrow_pack import list_buffers, pack_tokens
    from tideflow.kernels.cuda.arrow_pack import launch_pack

    lists = [rng.integers(0, 1000, rng.integers(0, 9)).tolist() for _ in range(14)]
    column = pa.array(lists, type=pa.list_(pa.int32())).slice(2)
    offsets, values = list_buffers(column)
    starts = rng.integers(0, np.diff(offsets) + 1)
    want = pack_tokens(column, starts, backend="torch")
    ids, positions = (np.full(want.input_ids.numel(), -1, dtype=np.int64) for _ in range(2))
    launch_pack(offsets, values, starts, want.cu_seqlens.numpy(), ids, positions)
    return {"pack": np.array_equal(ids, want.input_ids.numpy()) and np.array_equal(positions, want.positions.numpy())}


FAMILIES = {"sampling": _sampling, "moe": _moe, "arrow_pack": _arrow_pack}


def _main(family: str, seed: int) -> None:
    from numba import config

    assert config.ENABLE_CUDASIM, "run with NUMBA_ENABLE_CUDASIM=1"
    # the simulator runs the uint64 hash in numpy scalars, which warn on the (intended) wraparound
    warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
    print(json.dumps(FAMILIES[family](np.random.default_rng(seed))), flush=True)


@pytest.fixture(scope="module")
def simulated() -> dict[str, tuple[int, subprocess.Popen]]:
    """Every family's subprocess, started at once (each simulates on one core)."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)}
    procs = {}
    for family in FAMILIES:
        seed = int.from_bytes(os.urandom(4), "little")  # fresh inputs every run
        procs[family] = seed, subprocess.Popen(
            [sys.executable, "-m", "tests.kernels.test_cudasim_kernels", family, str(seed)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    yield procs
    for _, proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cuda_kernels_match_references_in_simulator(simulated, family):
    seed, proc = simulated[family]
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"seed {seed}:\n{err[-4000:]}"
    results = json.loads(out.splitlines()[-1])
    assert all(results.values()), f"seed {seed}: {results}"


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]))
