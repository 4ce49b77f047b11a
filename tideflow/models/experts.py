"""tideflow's MoE path for transformers models: routing and grouped experts on tideflow kernels.

transformers splits an MoE block in two: a router module (`gate`: linear -> softmax -> top-k
-> renormalise) and an experts module whose forward is looked up by name in
`transformers.integrations.moe.ExpertsInterface`. tideflow plugs into both:

- `EXPERTS_NAME` ("tideflow") is registered in `ExpertsInterface`: `permute` groups the
  (token, slot) assignments by expert, each expert runs its MLP as one dense matmul over its
  contiguous rows, and `combine` sums weight * output back per token.
- `DISPATCH_NAME` ("tideflow_dispatch") is the experts function of expert-parallel engines:
  it hands each layer's hidden states, top-k ids and weights to the callable bound on that
  experts module (`bind_dispatch`), which sends the rows to the expert actors that own the
  chosen experts (`tideflow.runtime.parallel.expert_parallel`). Bound per module, so each layer knows
  which layer it is without any global state.
- `use_tideflow_routing` replaces the forward of router modules whose semantics are known
  (`ROUTERS`) so that softmax / top-k / renormalisation run in `route`. The router's linear
  layer stays a torch matmul. Unknown routers keep transformers' forward (their experts still
  run on tideflow). Like transformers, routing runs in float32 whatever the model dtype.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tideflow.kernels.moe import combine, permute, route
from tideflow.models.expert_mlp import expert_mlp

EXPERTS_NAME = "tideflow"


@dataclass(frozen=True)
class RouterSpec:
    """What a transformers router class computes after its linear layer."""

    renormalize_attr: str | None  # attribute holding norm_topk_prob; None: always renormalise
    weights_in_logits_dtype: bool  # cast the top-k weights back to the router logits' dtype


ROUTERS = {
    "MixtralTopKRouter": RouterSpec(renormalize_attr=None, weights_in_logits_dtype=False),
    "Qwen2MoeTopKRouter": RouterSpec(renormalize_attr="norm_topk_prob", weights_in_logits_dtype=True),
}


def register_experts() -> str:
    """Registers the tideflow experts function with transformers (idempotent); returns its name."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(EXPERTS_NAME, experts_forward)
    return EXPERTS_NAME


DISPATCH_NAME = "tideflow_dispatch"
_DISPATCH_ATTR = "tideflow_dispatch"  # experts module attribute holding its layer's dispatch callable


def bind_dispatch(model, dispatch: dict) -> None:
    """Route the experts modules of `model` through `DISPATCH_NAME`: `dispatch` maps each
    experts module to a callable `(hidden_states [T, H], top_k_index [T, k], top_k_weights
    [T, k]) -> [T, H]`. Sets the attribute on those modules and the model's experts implementation."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(DISPATCH_NAME, dispatch_forward)
    for module, fn in dispatch.items():
        setattr(module, _DISPATCH_ATTR, fn)
    model.set_experts_implementation(DISPATCH_NAME)


def dispatch_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
    """The experts function of `DISPATCH_NAME`: the module's bound dispatch callable."""
    return getattr(self, _DISPATCH_ATTR)(hidden_states, top_k_index, top_k_weights)


def experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
    """The experts function: hidden_states [T, H], top_k_index / top_k_weights [T, k] -> [T, H]."""
    if self._is_expert_parallel:
        raise NotImplementedError("the tideflow experts function runs all experts in-process")
    rows, plan = permute(hidden_states, top_k_index, self.num_experts)
    out = torch.empty_like(rows)
    bounds = plan.offsets.tolist()  # one host sync per layer, for the per-expert slices
    for e in range(self.num_experts):
        lo, hi = bounds[e], bounds[e + 1]
        if lo < hi:
            out[lo:hi] = expert_mlp(self, e, rows[lo:hi])
    return combine(out, plan, top_k_weights)


def use_tideflow_routing(model: torch.nn.Module) -> int:
    """Points the forward of every known router module of `model` at `route`; returns how many."""
    count = 0
    for module in model.modules():
        spec = ROUTERS.get(type(module).__name__)
        if spec is not None:
            module.forward = functools.partial(_route_forward, module, spec)
            count += 1
    return count


def _route_forward(router, spec: RouterSpec, hidden_states: torch.Tensor):
    """(router_logits, top-k weights, top-k expert ids), as the replaced forward returns them."""
    logits = F.linear(hidden_states.reshape(-1, router.hidden_dim), router.weight)
    renormalize = spec.renormalize_attr is None or bool(getattr(router, spec.renormalize_attr))
    weights, experts = route(logits.float().contiguous(), router.top_k, renormalize)
    if spec.weights_in_logits_dtype:
        weights = weights.to(logits.dtype)
    return logits, weights, experts
