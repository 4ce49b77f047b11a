"""The numba.cuda MoE kernels on a CUDA GPU through the checked entry points (`route`, `permute`,
`combine`), against the torch references on the same device, on fresh random inputs every run
(seed in the assertion messages): float32 within 1e-5, float64 within 1e-12, bf16 within 1e-2.
Enough tokens for several counting-sort chunks, so the stable order across blocks is tested."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.test_moe import _experts, _rng
from tideflow.kernels.moe import combine, combine_ref, permute, permute_ref, route, route_ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_experts, top_k, renormalize", [(8, 2, True), (60, 4, False)])
def test_route(dtype, num_experts, top_k, renormalize):
    rng, seed = _rng()
    logits = torch.from_numpy(rng.standard_normal((1000, num_experts))).to(dtype).cuda()
    w, e = route(logits, top_k, renormalize)
    want_w, want_e = route_ref(logits, top_k, renormalize)
    assert torch.equal(e, want_e), f"seed {seed}"
    torch.testing.assert_close(w, want_w, rtol=TOL[dtype], atol=TOL[dtype], msg=f"seed {seed}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 300, 4096])
def test_permute_and_combine(dtype, tokens):
    rng, seed = _rng()
    num_experts, top_k, width = 8, 2, 256
    hidden = torch.from_numpy(rng.standard_normal((tokens, width))).to(dtype).cuda()
    experts = _experts(rng, tokens, num_experts, top_k).cuda()
    rows, plan = permute(hidden, experts, num_experts)
    want_rows, want = permute_ref(hidden, experts, num_experts)
    msg = f"seed {seed}"
    assert torch.equal(rows, want_rows) and torch.equal(plan.offsets, want.offsets), msg
    assert torch.equal(plan.source, want.source) and torch.equal(plan.dest, want.dest), msg
    expert_out = torch.from_numpy(rng.standard_normal((tokens * top_k, width))).to(dtype).cuda()
    weights = torch.from_numpy(rng.random((tokens, top_k))).float().cuda()
    torch.testing.assert_close(
        combine(expert_out, plan, weights), combine_ref(expert_out, want, weights), rtol=TOL[dtype], atol=TOL[dtype], msg=msg
    )


def test_moe_model_on_gpu_matches_transformers(tiny_model_dir):
    from tideflow.models.loader import load_model

    for kind in ("mixtral", "qwen2_moe"):
        path = tiny_model_dir(kind)
        ours, _ = load_model(path, dtype="float32", device="cuda")
        theirs, _ = load_model(path, dtype="float32", device="cuda", kernel_backend="torch")
        ids = torch.randint(5, ours.config.vocab_size, (1, 64), device="cuda")
        with torch.no_grad():
            torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-4, atol=1e-4)
