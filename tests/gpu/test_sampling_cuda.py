"""The numba.cuda sampling kernel on a CUDA GPU, through the checked entry point `sample`, against
the torch reference on the same device and against the CPU kernel: the same token ids, whatever
the device, on fresh random inputs every run (seed in the assertion messages); outputs
poisoned before each launch."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.test_sampling import _draw, _logits, _params, _reference, _rng
from tideflow.sampling_params import SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _to(p: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in p.items()}


@pytest.mark.parametrize("vocab", [7, 1000, 32000, 152064])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_tokens_as_reference_and_cpu(vocab, dtype):
    rng, seed = _rng()
    rows = 64
    logits, p = _logits(rng, rows, vocab, dtype), _params(rng, rows, vocab)
    cpu = _draw(logits, p)
    out = torch.full((rows,), -7, dtype=torch.int64, device="cuda")  # poisoned
    got = _draw(logits.cuda(), _to(p, "cuda"), out=out)
    assert got is out
    want = _reference(logits.cuda(), _to(p, "cuda"))
    assert torch.equal(got.cpu(), want.cpu()), f"seed {seed}: rows {torch.nonzero(got.cpu() != want.cpu()).flatten().tolist()}"
    assert torch.equal(got.cpu(), cpu), f"seed {seed}"


def test_rows_are_independent_on_gpu():
    rng, seed = _rng()
    rows, vocab = 32, 5000
    logits, p = _logits(rng, rows, vocab, torch.float32).cuda(), _to(_params(rng, rows, vocab), "cuda")
    alone = torch.cat([_draw(logits[r : r + 1], {k: v[r : r + 1] for k, v in p.items()}) for r in range(rows)])
    perm = torch.randperm(rows, device="cuda")
    shuffled = _draw(logits[perm].contiguous(), {k: v[perm].contiguous() for k, v in p.items()})
    assert torch.equal(shuffled, alone[perm]), f"seed {seed}"


def test_sampler_draws_the_same_tokens_on_gpu_and_cpu():
    from tests.runtime.engine.test_sampler import VOCAB, make_sampler, make_seq

    params = [SamplingParams(temperature=0.9, top_p=0.8, seed=s) for s in range(6)]
    params += [SamplingParams(temperature=1.1, top_k=7, min_p=0.05, seed=99), SamplingParams(temperature=0.0)]
    logits = torch.randn(len(params), VOCAB)
    cpu = make_sampler()(logits, [make_seq(p) for p in params]).token_ids
    gpu = make_sampler()(logits.cuda(), [make_seq(p) for p in params]).token_ids
    assert cpu == gpu


@pytest.mark.parametrize("vocab", [1000, 152064])
def test_bitmask_on_gpu_same_tokens_as_reference_and_cpu(vocab):
    """A grammar bitmask (structured outputs) on the GPU: the masking pass, then the kernel."""
    from tests.kernels.test_sampling import _bitmask

    rng, seed = _rng()
    rows = 32
    logits, p = _logits(rng, rows, vocab, torch.float32), _params(rng, rows, vocab)
    bitmask = _bitmask(rng, rows, vocab, -(-vocab // 32))
    cpu = _draw(logits, p, bitmask=bitmask)
    got = _draw(logits.cuda(), _to(p, "cuda"), bitmask=bitmask.cuda())
    want = _draw(logits.cuda(), _to(p, "cuda"), bitmask=bitmask.cuda(), backend="torch")
    assert torch.equal(got.cpu(), want.cpu()) and torch.equal(got.cpu(), cpu), f"seed {seed}"
