"""The numba MoE kernels (route, permute, combine) against their torch references on fresh random
inputs every run, and the tideflow experts / routing plugged into transformers' MoE blocks.

Each randomised test draws its seed from os.urandom and names it in its assertion messages."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tideflow.kernels.moe import (
    _combine_cpu,
    _combine_serial,
    _gather_rows_cpu,
    _gather_rows_serial,
    _plan_cpu,
    _route_cpu,
    combine,
    combine_ref,
    permute,
    permute_ref,
    plan_ref,
    route,
    route_ref,
)

TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2}


def _rng() -> tuple[np.random.Generator, int]:
    seed = int.from_bytes(os.urandom(4), "little")
    return np.random.default_rng(seed), seed


def _experts(rng, tokens: int, num_experts: int, top_k: int) -> torch.Tensor:
    """Distinct experts per token, skewed so some experts get many tokens and some none."""
    weights = rng.dirichlet(np.full(num_experts, 0.3)) + 1e-3
    weights /= weights.sum()
    rows = [rng.choice(num_experts, top_k, replace=False, p=weights) for _ in range(tokens)]
    return torch.from_numpy(np.stack(rows) if rows else np.zeros((0, top_k), dtype=np.int64))


@pytest.mark.parametrize("num_experts, top_k", [(8, 2), (60, 4), (4, 1), (3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("renormalize", [True, False])
def test_route_matches_reference(num_experts, top_k, dtype, renormalize):
    rng, seed = _rng()
    logits = torch.from_numpy(rng.standard_normal((77, num_experts)) * 2).to(dtype)
    want_w, want_e = route_ref(logits, top_k, renormalize)
    w, e = route(logits, top_k, renormalize)
    assert torch.equal(e, want_e), f"seed {seed}"
    torch.testing.assert_close(w, want_w, rtol=TOL[dtype], atol=TOL[dtype], msg=f"seed {seed}")
    poisoned_w, poisoned_e = torch.full_like(w, float("nan")), torch.full_like(e, -5)
    _route_cpu(logits.numpy(), renormalize, poisoned_w.numpy(), poisoned_e.numpy())
    assert torch.equal(poisoned_e, want_e) and torch.equal(poisoned_w, w), f"seed {seed}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("tokens, num_experts, top_k", [(300, 8, 2), (5, 16, 4), (1, 2, 2), (0, 4, 2)])
def test_permute_matches_reference_and_is_stable(dtype, tokens, num_experts, top_k):
    rng, seed = _rng()
    hidden = torch.from_numpy(rng.standard_normal((tokens, 24))).to(dtype)
    experts = _experts(rng, tokens, num_experts, top_k)
    want_rows, want = permute_ref(hidden, experts, num_experts)
    rows, plan = permute(hidden, experts, num_experts)
    msg = f"seed {seed}"
    assert torch.equal(rows, want_rows) and torch.equal(plan.offsets, want.offsets), msg
    assert torch.equal(plan.source, want.source) and torch.equal(plan.dest, want.dest), msg
    for e in range(num_experts):  # expert-contiguous, tokens in order within each expert
        span = plan.source[plan.offsets[e] : plan.offsets[e + 1]]
        assert (span.diff() > 0).all(), msg
        assert (experts[span] == e).any(dim=1).all(), msg


def test_permute_kernels_write_every_element():
    rng, seed = _rng()
    tokens, num_experts, top_k = 200, 8, 2
    experts = _experts(rng, tokens, num_experts, top_k)
    hidden = torch.from_numpy(rng.standard_normal((tokens, 16)))
    want = plan_ref(experts, num_experts)
    offsets = np.full(num_experts + 1, -3, dtype=np.int64)
    source, dest = np.full(tokens * top_k, -3, dtype=np.int64), np.full((tokens, top_k), -3, dtype=np.int64)
    assert _plan_cpu(experts.numpy(), num_experts, offsets, source, dest)
    msg = f"seed {seed}"
    assert np.array_equal(offsets, want.offsets) and np.array_equal(source, want.source), msg
    assert np.array_equal(dest, want.dest), msg
    for gather in (_gather_rows_cpu, _gather_rows_serial):
        rows = np.full((tokens * top_k, 16), np.nan)
        gather(hidden.numpy(), source, rows)
        assert np.array_equal(rows, hidden.numpy()[source]), msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.float64])
def test_combine_matches_reference(dtype, weights_dtype):
    rng, seed = _rng()
    tokens, num_experts, top_k, width = 129, 8, 3, 40
    _, plan = permute_ref(torch.zeros(tokens, 1), _experts(rng, tokens, num_experts, top_k), num_experts)
    expert_out = torch.from_numpy(rng.standard_normal((tokens * top_k, width))).to(dtype)
    weights = torch.from_numpy(rng.random((tokens, top_k))).to(weights_dtype)
    want = combine_ref(expert_out, plan, weights)
    got = combine(expert_out, plan, weights)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype], msg=f"seed {seed}")
    if dtype != torch.bfloat16:
        exact = (expert_out.double()[plan.dest] * weights.double()[..., None]).sum(1)  # against float64 math
        torch.testing.assert_close(got.double(), exact, rtol=TOL[dtype], atol=TOL[dtype], msg=f"seed {seed}")
        for kernel in (_combine_cpu, _combine_serial):
            out = np.full((tokens, width), np.nan, dtype=expert_out.numpy().dtype)
            kernel(expert_out.numpy(), plan.dest.numpy(), weights.to(dtype).numpy(), out)
            torch.testing.assert_close(torch.from_numpy(out), want, rtol=TOL[dtype], atol=TOL[dtype], msg=f"seed {seed}")


def test_rejects_bad_inputs():
    hidden, experts = torch.zeros(4, 8), torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]])
    with pytest.raises(ValueError, match=r"expert ids must be in \[0, 3\)"):
        permute(hidden, experts, 3)
    with pytest.raises(ValueError, match="experts must be torch.int64"):
        permute(hidden, experts.int(), 4)
    with pytest.raises(ValueError, match=r"experts must have shape \(4, \*\)"):
        permute(hidden, experts[:3], 4)
    with pytest.raises(ValueError, match="hidden must be contiguous"):
        permute(torch.zeros(8, 4).t(), experts, 4)
    with pytest.raises(ValueError, match="experts is on meta but the inputs are on cpu"):
        permute(hidden, experts.to("meta"), 4)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 4\]"):
        route(torch.zeros(3, 4), 5, True)
    with pytest.raises(ValueError, match="router_logits must be torch.float32 or torch.float64"):
        route(torch.zeros(3, 4, dtype=torch.bfloat16), 2, True)
    _, plan = permute(hidden, experts, 4)
    with pytest.raises(ValueError, match="expert_out has 7 rows, the plan 8"):
        combine(torch.zeros(7, 8), plan, torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"weights must have shape \(4, 2\)"):
        combine(torch.zeros(8, 8), plan, torch.ones(4, 3))
    with pytest.raises(ValueError, match="backend must be one of"):
        combine(torch.zeros(8, 8), plan, torch.ones(4, 2), backend="numba")


# -- the tideflow experts and routing inside transformers' MoE blocks ---------------------------
@pytest.fixture(scope="module", params=["mixtral", "qwen2_moe"])
def moe_models(request, tiny_model_dir):
    """(tideflow-kernel model, transformers-eager model) of one tiny MoE architecture, float64."""
    from tideflow.models.loader import load_model

    path = tiny_model_dir(request.param)
    ours, _ = load_model(path, dtype="float64")
    theirs, _ = load_model(path, dtype="float64", kernel_backend="torch")
    return ours, theirs


def _moe_blocks(model):
    return [m for m in model.modules() if hasattr(m, "gate") and hasattr(m, "experts")]


def test_experts_and_routing_match_transformers(moe_models):
    ours, theirs = moe_models
    assert ours.config._experts_implementation == "tideflow"
    assert theirs.config._experts_implementation == "eager"
    rng, seed = _rng()
    for mine, ref in zip(_moe_blocks(ours), _moe_blocks(theirs)):
        hidden = torch.from_numpy(rng.standard_normal((57, ours.config.hidden_size)))
        with torch.no_grad():
            logits, weights, experts = mine.gate(hidden)
            ref_logits, ref_weights, ref_experts = ref.gate(hidden)
            assert torch.equal(experts, ref_experts) and weights.dtype == ref_weights.dtype, f"seed {seed}"
            torch.testing.assert_close(weights, ref_weights, rtol=1e-6, atol=1e-7)  # routed in float32, as HF does
            got = mine.experts(hidden, experts, weights)  # same routing: float64 all the way
            want = ref.experts(hidden, experts, weights)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"seed {seed}")


def test_moe_model_logits_match_transformers(moe_models):
    ours, theirs = moe_models
    ids = torch.randint(5, ours.config.vocab_size, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-5, atol=1e-5)
