"""One expert's MLP, and the holder an expert actor keeps its experts in.

`expert_mlp` is the per-expert computation of every tideflow experts path (in-process in
`tideflow.models.experts`, remote in `tideflow.runtime.parallel.experts_actor`), so both run the same ops
in the same order. It reads the layout flags transformers' `use_experts_implementation`
sets on an experts module. `HeldExperts` carries the same attributes for the experts an
actor holds, without transformers' module class: importing torch is all an expert actor
pays (transformers alone costs a few CPU seconds per process).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    out = x @ weight if transposed else F.linear(x, weight)
    return out if bias is None else out + bias


def expert_mlp(experts, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e's MLP over its rows, honouring the layout flags transformers sets on the module."""
    bias = experts.has_bias
    if experts.has_gate:
        h = _linear(x, experts.gate_up_proj[e], experts.gate_up_proj_bias[e] if bias else None, experts.is_transposed)
        h = experts._apply_gate(h)
    else:
        h = _linear(x, experts.up_proj[e], experts.up_proj_bias[e] if bias else None, experts.is_transposed)
        h = experts.act_fn(h)
    out = _linear(h, experts.down_proj[e], experts.down_proj_bias[e] if bias else None, experts.is_transposed)
    return experts.post_expert_norm(out) if experts.has_post_expert_norm else out


@dataclass(slots=True)
class HeldExperts:
    """Some experts of one MoE layer in the layout `expert_mlp` reads: gated, concatenated
    [gate; up], untransposed, no bias, no post-expert norm (what `check_supported` admits)."""

    gate_up_proj: torch.Tensor  # [n, 2I, H]: expert i's gate rows, then its up rows
    down_proj: torch.Tensor  # [n, H, I]
    act_fn: object  # the activation of the gate half
    has_gate: bool = True
    has_bias: bool = False
    is_transposed: bool = False
    has_post_expert_norm: bool = False

    def _apply_gate(self, gate_up: torch.Tensor) -> torch.Tensor:
        """transformers' default gate: act(gate) * up over the concatenated halves."""
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act_fn(gate) * up
