"""The numba.cuda Arrow pack step on a CUDA GPU through `pack_tokens(..., device="cuda")`, against
the CPU kernel and the torch reference, on fresh random batches every run (seed in messages)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.test_arrow_pack import _column, _rng, _starts
from tideflow.kernels.arrow_pack import pack_tokens

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("rows", [0, 1, 300])
@pytest.mark.parametrize("large", [False, True])
def test_pack_on_gpu(rows, large):
    rng, seed = _rng()
    column = _column(rng, rows, large)
    starts = _starts(rng, column)
    cpu = pack_tokens(column, starts)
    for packed in (pack_tokens(column, starts, device="cuda"), pack_tokens(column, starts, device="cuda", backend="torch")):
        assert packed.input_ids.is_cuda and packed.cu_seqlens.is_cuda
        for name in ("input_ids", "positions", "cu_seqlens"):
            assert torch.equal(getattr(packed, name).cpu(), getattr(cpu, name)), f"seed {seed}: {name}"
