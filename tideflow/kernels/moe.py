"""Mixture-of-experts: top-k routing, expert-contiguous permutation, weighted combine.

An MoE layer sends each token to k of E experts. Running every expert over exactly its own
tokens, as one dense matmul each, needs the (token, slot) assignments grouped by expert:

- `route`: softmax over the router logits, top-k, optional renormalisation of the k weights
  (Mixtral always renormalises, Qwen2-MoE when `norm_topk_prob`).
- `permute`: a stable counting sort of the assignments by expert (counts, exclusive prefix sum:
  `offsets`), and the token rows gathered in that order, so expert e owns rows
  `offsets[e]:offsets[e+1]` of one contiguous buffer. Stable: within an expert, tokens keep
  their order, so the result does not depend on how the sort was parallelised.
- `combine`: un-permute and sum over the k slots, weight * expert output, per token.

Each has a torch reference (`*_ref`), a numba CPU kernel and a numba.cuda kernel
(`tideflow.kernels.cuda.moe`), behind a checked entry point that dispatches on the device.
Arithmetic is float64 for float64 inputs and float32 otherwise (bf16 / fp16 outputs are rounded
once at the end); `permute` only moves bits, so it takes any dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import torch
from numba.extending import register_jitable

from tideflow.kernels.checks import check_backend, check_tensor

_FLOATS = (torch.float32, torch.float64)
_COPY_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # element size -> integer view for copying bits
_PARALLEL_BYTES = 1 << 20  # below this, the CPU kernels run serially


@dataclass(slots=True)
class ExpertPlan:
    """Where each (token, slot) assignment sits in the expert-contiguous buffer."""

    offsets: torch.Tensor  # [E + 1] int64: expert e owns permuted rows offsets[e]:offsets[e + 1]
    source: torch.Tensor  # [T * k] int64: permuted row -> the token it copies
    dest: torch.Tensor  # [T, k] int64: (token, slot) -> the permuted row holding that expert's output


# -- torch references ----------------------------------------------------------------------------
def route_ref(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (weights [T, k] in the logits' dtype, experts [T, k] int64), slots
    in descending weight order."""
    weights, experts = router_logits.softmax(dim=-1).topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def plan_ref(experts: torch.Tensor, num_experts: int) -> ExpertPlan:
    flat = experts.reshape(-1)
    order = flat.sort(stable=True).indices  # assignments (token * k + slot), grouped by expert
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=flat.device)
    offsets[1:] = flat.bincount(minlength=num_experts).cumsum(0)
    dest = torch.empty_like(order)
    dest[order] = torch.arange(order.numel(), device=flat.device)
    return ExpertPlan(offsets, order // experts.shape[1], dest.view(experts.shape))


def permute_ref(hidden: torch.Tensor, experts: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, ExpertPlan]:
    """hidden [T, H], experts [T, k] -> (hidden rows in expert-contiguous order [T * k, H], plan)."""
    plan = plan_ref(experts, num_experts)
    return hidden[plan.source], plan


def combine_ref(expert_out: torch.Tensor, plan: ExpertPlan, weights: torch.Tensor) -> torch.Tensor:
    """expert_out [T * k, H] in permuted order, weights [T, k] -> [T, H] in expert_out's dtype."""
    compute = torch.float64 if expert_out.dtype == torch.float64 else torch.float32
    out = (expert_out.to(compute)[plan.dest] * weights.to(compute)[..., None]).sum(dim=1)
    return out.to(expert_out.dtype)


# -- numba CPU kernels ---------------------------------------------------------------------------
@register_jitable
def route_token(logits, t, renormalize, weights, experts):
    """Routes token t (shared by the CPU and CUDA kernels): softmax, then top-k by repeated
    selection of the largest weight not taken yet (the lower expert id on ties)."""
    num_experts, top_k = logits.shape[1], experts.shape[1]
    top = logits[t, 0]
    for e in range(1, num_experts):
        top = max(top, logits[t, e])
    total = 0.0
    for e in range(num_experts):
        total += math.exp(logits[t, e] - top)
    picked = 0.0
    for j in range(top_k):
        best = -1
        for e in range(num_experts):
            taken = False
            for i in range(j):
                taken |= experts[t, i] == e
            if not taken and (best < 0 or logits[t, e] > logits[t, best]):
                best = e
        experts[t, j] = best
        weights[t, j] = math.exp(logits[t, best] - top) / total
        picked += weights[t, j]
    if renormalize:
        for j in range(top_k):
            weights[t, j] /= picked


@numba.njit(cache=True)
def _route_cpu(logits, renormalize, weights, experts):  # pragma: no cover (jitted)
    """Serial: T * E is small (a parallel region costs more than the whole loop)."""
    for t in range(logits.shape[0]):
        route_token(logits, t, renormalize, weights, experts)


@numba.njit(cache=True)
def _plan_cpu(experts, num_experts, offsets, source, dest):  # pragma: no cover (jitted)
    """Serial stable counting sort (T * k is small next to the row copies). Returns False on
    an expert id outside [0, num_experts)."""
    num_tokens, top_k = experts.shape
    offsets[:] = 0
    for t in range(num_tokens):
        for j in range(top_k):
            e = experts[t, j]
            if e < 0 or e >= num_experts:
                return False
            offsets[e + 1] += 1
    for e in range(num_experts):
        offsets[e + 1] += offsets[e]
    fill = offsets[:-1].copy()
    for t in range(num_tokens):
        for j in range(top_k):
            e = experts[t, j]
            dest[t, j] = fill[e]
            source[fill[e]] = t
            fill[e] += 1
    return True


@numba.njit(parallel=True, cache=True)
def _gather_rows_cpu(hidden, source, out):  # pragma: no cover (jitted)
    for p in numba.prange(source.shape[0]):
        out[p, :] = hidden[source[p], :]


@numba.njit(cache=True)
def _gather_rows_serial(hidden, source, out):  # pragma: no cover (jitted)
    for p in range(source.shape[0]):
        out[p, :] = hidden[source[p], :]


@register_jitable
def _combine_token(expert_out, dest, weights, out, t):
    out[t, :] = 0
    for j in range(dest.shape[1]):
        w = weights[t, j]
        row = dest[t, j]
        for h in range(out.shape[1]):
            out[t, h] += w * expert_out[row, h]


@numba.njit(parallel=True, cache=True)
def _combine_cpu(expert_out, dest, weights, out):  # pragma: no cover (jitted)
    for t in numba.prange(dest.shape[0]):
        _combine_token(expert_out, dest, weights, out, t)


@numba.njit(cache=True)
def _combine_serial(expert_out, dest, weights, out):  # pragma: no cover (jitted)
    for t in range(dest.shape[0]):
        _combine_token(expert_out, dest, weights, out, t)


def _parallel_pays(t: torch.Tensor) -> bool:
    """Decode steps move a few KiB per layer: less than starting a parallel region costs."""
    return t.numel() * t.element_size() >= _PARALLEL_BYTES


# -- entry points --------------------------------------------------------------------------------
def _on_cuda(fn: str, t: torch.Tensor) -> bool:
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{fn}: no kernel for device {t.device}; use backend='torch'")
    return t.device.type == "cuda"


def route(router_logits, top_k: int, renormalize: bool, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Checked entry point of `route_ref`: router_logits [T, E] float32 / float64, contiguous."""
    fn = "route"
    check_backend(fn, backend)
    check_tensor(fn, "router_logits", router_logits, shape=(None, None), dtypes=_FLOATS, device=None)
    num_tokens, num_experts = router_logits.shape
    if not 0 < top_k <= num_experts:
        raise ValueError(f"route: top_k must be in [1, {num_experts}], got {top_k}")
    if backend == "torch":
        return route_ref(router_logits, top_k, renormalize)
    weights = torch.empty((num_tokens, top_k), dtype=router_logits.dtype, device=router_logits.device)
    experts = torch.empty((num_tokens, top_k), dtype=torch.int64, device=router_logits.device)
    if _on_cuda(fn, router_logits):
        from tideflow.kernels.cuda.moe import route_cuda

        route_cuda(router_logits, renormalize, weights, experts)
    else:
        _route_cpu(router_logits.numpy(), renormalize, weights.numpy(), experts.numpy())
    return weights, experts


def permute(hidden, experts, num_experts: int, *, backend: str = "auto") -> tuple[torch.Tensor, ExpertPlan]:
    """Checked entry point of `permute_ref`: hidden [T, H] (any dtype), experts [T, k] int64 with
    ids in [0, num_experts) (checked on CPU; on CUDA out-of-range ids are skipped, not reported,
    since checking would cost a device sync)."""
    fn = "permute"
    check_backend(fn, backend)
    check_tensor(fn, "hidden", hidden, shape=(None, None), dtypes=None, device=None)
    check_tensor(fn, "experts", experts, shape=(hidden.shape[0], None), dtypes=(torch.int64,), device=hidden.device)
    if num_experts < 1 or hidden.element_size() not in _COPY_VIEW:
        raise ValueError(f"permute: need num_experts >= 1 and 2-, 4- or 8-byte elements, got {num_experts}, {hidden.dtype}")
    if backend == "torch":
        return permute_ref(hidden, experts, num_experts)
    num_tokens, top_k = experts.shape
    dev = hidden.device
    plan = ExpertPlan(
        offsets=torch.empty(num_experts + 1, dtype=torch.int64, device=dev),
        source=torch.empty(num_tokens * top_k, dtype=torch.int64, device=dev),
        dest=torch.empty((num_tokens, top_k), dtype=torch.int64, device=dev),
    )
    out = torch.empty((num_tokens * top_k, hidden.shape[1]), dtype=hidden.dtype, device=dev)
    bits = _COPY_VIEW[hidden.element_size()]
    if _on_cuda(fn, hidden):
        from tideflow.kernels.cuda.moe import permute_cuda

        permute_cuda(hidden.view(bits), experts, plan.offsets, plan.source, plan.dest, out.view(bits))
        return out, plan
    if not _plan_cpu(experts.numpy(), num_experts, plan.offsets.numpy(), plan.source.numpy(), plan.dest.numpy()):
        raise ValueError(f"permute: expert ids must be in [0, {num_experts})")
    gather = _gather_rows_cpu if _parallel_pays(out) else _gather_rows_serial
    gather(hidden.view(bits).numpy(), plan.source.numpy(), out.view(bits).numpy())
    return out, plan


def combine(expert_out, plan: ExpertPlan, weights, *, backend: str = "auto") -> torch.Tensor:
    """Checked entry point of `combine_ref`: expert_out [T * k, H] and weights [T, k] floats
    (computed in float64 when expert_out is float64, else float32), plan from `permute` on the
    same device."""
    fn = "combine"
    check_backend(fn, backend)
    floats = _FLOATS + (torch.bfloat16, torch.float16)
    check_tensor(fn, "expert_out", expert_out, shape=(None, None), dtypes=floats, device=None)
    dev = expert_out.device
    num_tokens, top_k = plan.dest.shape
    check_tensor(fn, "weights", weights, shape=(num_tokens, top_k), dtypes=floats, device=dev)
    check_tensor(fn, "plan.dest", plan.dest, shape=(num_tokens, top_k), dtypes=(torch.int64,), device=dev)
    if expert_out.shape[0] != num_tokens * top_k:
        raise ValueError(f"combine: expert_out has {expert_out.shape[0]} rows, the plan {num_tokens * top_k}")
    if backend == "torch":
        return combine_ref(expert_out, plan, weights)
    compute = torch.float64 if expert_out.dtype == torch.float64 else torch.float32
    rows, w = expert_out.to(compute), weights.to(compute)
    out = torch.empty((num_tokens, expert_out.shape[1]), dtype=compute, device=dev)
    if _on_cuda(fn, expert_out):
        from tideflow.kernels.cuda.moe import combine_cuda

        combine_cuda(rows, plan.dest, w, out)
    else:
        kernel = _combine_cpu if _parallel_pays(rows) else _combine_serial
        kernel(rows.numpy(), plan.dest.numpy(), w.numpy(), out.numpy())
    return out.to(expert_out.dtype)


def bench_cases() -> list[tuple[str, object, object]]:
    """(name, kernel, reference): routing + permute + combine of 2048 tokens, 8 experts, top-2,
    hidden 1024 (a prefill chunk of a Mixtral-shaped layer), float32."""
    gen = torch.Generator().manual_seed(0)
    tokens, num_experts, top_k, hidden_size = 2048, 8, 2, 1024
    logits = torch.randn(tokens, num_experts, generator=gen)
    hidden = torch.randn(tokens, hidden_size, generator=gen)

    def run(backend: str):
        def step():
            weights, experts = route(logits, top_k, True, backend=backend)
            rows, plan = permute(hidden, experts, num_experts, backend=backend)
            return combine(rows, plan, weights, backend=backend)

        return step

    return [("moe route+permute+combine 2048x8 top-2 h1024", run("auto"), run("torch"))]
