"""How each architecture's decoder layer maps onto `PackedDecoder`: one small table per part.

A model takes the packed path when every norm, attention and dense MLP class of its decoder is
listed here (MoE blocks need no entry: they are called as they are):

- `NORMS`: norm class -> `NormStyle`, how its weight scales the normalised rows;
- `ATTENTIONS`: attention class -> `AttentionLayout`, where q, k and v come from, whether each
  head's q and k are RMS-normalised before rotary, and the sliding window;
- `MLPS`: gated-MLP class -> where the [gate; up] projection and the activation come from.

Architectures listed: Llama, Mistral, Mixtral, Qwen2, Qwen2-MoE, Qwen3 (per-head q/k norms),
Gemma (v1: GeGLU, scaled embeddings, (1 + weight) norms) and Phi-3 (fused qkv_proj and
gate_up_proj, partial rotary). Every lookup happens when `PackedDecoder` is built; the forward
pass only calls what these tables returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

Norm = Callable[[torch.Tensor], torch.Tensor]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm: statistics in float32, scaled in the input dtype."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def scaled_in_float32_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Gemma RMSNorm: normalised and scaled in float32, then cast to the input
    dtype. `weight` is the float32 `1 + w` (see `GEMMA_NORM`)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * weight).to(x.dtype)


@dataclass(frozen=True, slots=True)
class NormStyle:
    apply: Callable  # (x, weight, eps) -> normalised x
    weight: Callable  # norm module -> the weight `apply` takes, prepared once
    eps: str  # the module attribute holding epsilon


LLAMA_NORM = NormStyle(rms_norm, lambda m: m.weight, "variance_epsilon")
GEMMA_NORM = NormStyle(scaled_in_float32_rms_norm, lambda m: 1.0 + m.weight.float(), "eps")

_LLAMA_NORMS = ("Llama", "Mistral", "Mixtral", "Qwen2", "Qwen2Moe", "Qwen3", "Phi3")
NORMS: dict[str, NormStyle] = {f"{arch}RMSNorm": LLAMA_NORM for arch in _LLAMA_NORMS} | {"GemmaRMSNorm": GEMMA_NORM}


def make_norm(module) -> Norm:
    """`module`'s forward as a function of x alone (its weight prepared now)."""
    style = NORMS[type(module).__name__]
    return partial(style.apply, weight=style.weight(module), eps=getattr(module, style.eps))


def make_head_norm(q_norm, k_norm, heads: int, kv_heads: int) -> Norm:
    """Per-head q and k norms over [tokens, heads + kv_heads, head_dim] in one call: each head
    row scaled by its own norm's weight (the same numbers as normalising q and k apart)."""
    q_style, k_style = NORMS[type(q_norm).__name__], NORMS[type(k_norm).__name__]
    q_eps, k_eps = getattr(q_norm, q_style.eps), getattr(k_norm, k_style.eps)
    if q_style is not k_style or q_eps != k_eps:
        raise ValueError("q_norm and k_norm differ in style or epsilon")
    q_w, k_w = q_style.weight(q_norm), k_style.weight(k_norm)
    weight = torch.cat([q_w.expand(heads, -1), k_w.expand(kv_heads, -1)])
    return partial(q_style.apply, weight=weight, eps=q_eps)


def _fuse(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for `linears` stacked by output rows; each module's parameters
    become views of it, so the model keeps working and nothing is stored twice."""
    weight = torch.cat([m.weight.detach() for m in linears])
    has_bias = [m.bias is not None for m in linears]
    if any(has_bias) and not all(has_bias):
        bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears])
    else:
        bias = torch.cat([m.bias.detach() for m in linears]) if all(has_bias) else None
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[start : start + rows], requires_grad=False)
        if m.bias is not None:
            m.bias = torch.nn.Parameter(bias[start : start + rows], requires_grad=False)
        start += rows
    return weight, bias


@dataclass(slots=True)
class QKV:
    weight: torch.Tensor  # [(heads + 2 * kv_heads) * head_dim, hidden]: q rows, then k, then v
    bias: torch.Tensor | None
    heads: int
    kv_heads: int


def fuse_qkv(attn) -> QKV:
    """Separate q_proj, k_proj, v_proj, fused (head counts from their sizes, which tensor
    parallelism narrows)."""
    weight, bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
    d = attn.head_dim
    return QKV(weight, bias, attn.q_proj.out_features // d, attn.k_proj.out_features // d)


def fused_qkv(attn) -> QKV:
    """Phi-3's qkv_proj, used as it is."""
    kv_heads = attn.num_key_value_heads
    heads = attn.qkv_proj.out_features // attn.head_dim - 2 * kv_heads
    return QKV(attn.qkv_proj.weight, attn.qkv_proj.bias, heads, kv_heads)


def _no_window(attn) -> int | None:
    return None


def _config_window(attn) -> int | None:
    return getattr(attn.config, "sliding_window", None)


def _layer_window(attn) -> int | None:
    return getattr(attn, "sliding_window", None)


@dataclass(frozen=True, slots=True)
class AttentionLayout:
    qkv: Callable[..., QKV]  # attention module -> its stacked q/k/v projection
    window: Callable  # attention module -> the sliding window its forward passes on (None: none)
    head_norms: bool = False  # q_norm / k_norm: RMSNorm over each head's dims, before rotary


_SEPARATE = AttentionLayout(fuse_qkv, _no_window)
ATTENTIONS: dict[str, AttentionLayout] = {
    "LlamaAttention": _SEPARATE,
    "MistralAttention": AttentionLayout(fuse_qkv, _config_window),
    "MixtralAttention": AttentionLayout(fuse_qkv, _config_window),
    "Qwen2Attention": AttentionLayout(fuse_qkv, _layer_window),
    "Qwen2MoeAttention": _SEPARATE,  # transformers does not pass its window on
    "Qwen3Attention": AttentionLayout(fuse_qkv, _layer_window, head_norms=True),
    "GemmaAttention": _SEPARATE,
    "Phi3Attention": AttentionLayout(fused_qkv, _config_window),
}


def _fuse_gate_up(mlp) -> tuple[torch.Tensor, torch.Tensor | None, Callable]:
    return (*_fuse([mlp.gate_proj, mlp.up_proj]), mlp.act_fn)


def _fused_gate_up(mlp) -> tuple[torch.Tensor, torch.Tensor | None, Callable]:
    return mlp.gate_up_proj.weight, mlp.gate_up_proj.bias, mlp.activation_fn


# gated-MLP class -> (mlp -> ([gate; up] weight, bias, activation)); all have a down_proj
MLPS: dict[str, Callable] = {
    **dict.fromkeys(("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen2MoeMLP", "Qwen3MLP", "GemmaMLP"), _fuse_gate_up),
    "Phi3MLP": _fused_gate_up,
}

# config fields whose feature the packed path does not compute, with the reason it gives
UNSUPPORTED_CONFIG = {
    "attn_logit_softcapping": "attention logit soft-capping (tideflow's paged attention has none)",
    "final_logit_softcapping": "final logit soft-capping",
}
