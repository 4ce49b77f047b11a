"""tideflow's own forward pass for Llama-pattern decoders, over the packed batch.

transformers' modules are written for `[batch, seq, hidden]` inputs and cost a Python call,
keyword plumbing and a few small tensor ops per module. On a CPU at decode batch sizes that
overhead is a large share of a step. For architectures whose layers follow the Llama pattern
(pre-norm RMSNorm; rotary attention with optional q/k/v bias; a gated MLP or any MoE block),
`PackedDecoder` runs the same weights on `[tokens, hidden]` with fewer, larger ops:

- q, k and v come from one matmul, gate and up from another (the transformers parameters are
  re-pointed at views of the fused tensors, so no weight is held twice);
- rotary embedding rotates q and k in one pass, with cos/sin from the model's own rotary
  module (so every rope scaling type transformers knows works unchanged);
- attention goes straight to tideflow's paged attention (`runtime.attention.make_attend`);
- logits are computed only at the rows that sample;
- MoE blocks (and any MLP it does not know) are called as they are.

Numerics follow transformers: RMSNorm computes in float32 and casts back (also for float64
weights, as transformers does), residual adds keep their order, and each layer gets the
sliding window transformers would pass its attention function. `unsupported_reason(model)`
says why a model cannot run here; the engine then keeps the transformers forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _no_window(attn) -> int | None:
    return None


def _config_window(attn) -> int | None:
    return getattr(attn.config, "sliding_window", None)


def _layer_window(attn) -> int | None:
    return getattr(attn, "sliding_window", None)


# attention class -> the sliding window its transformers forward passes to the attention function
ATTENTIONS: dict[str, Callable] = {
    "LlamaAttention": _no_window,
    "MistralAttention": _config_window,
    "MixtralAttention": _config_window,
    "Qwen2Attention": _layer_window,
    "Qwen2MoeAttention": _no_window,  # transformers does not pass its window on
}
DENSE_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen2MoeMLP"})
NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "MixtralRMSNorm", "Qwen2RMSNorm", "Qwen2MoeRMSNorm"})
_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


def _decoder(model):
    """The decoder stack: `model.model`, or the language model inside a multimodal wrapper
    (LLaVA: `model.model.language_model`; its LM head stays `model.lm_head`)."""
    base = getattr(model, "model", None)
    language_model = getattr(base, "language_model", None)
    return base if language_model is None else language_model


def unsupported_reason(model) -> str | None:
    """Why `model` cannot run on `PackedDecoder`, or None when it can."""
    base = _decoder(model)
    for owner, attr in ((model, "lm_head"), (base, "embed_tokens"), (base, "layers"), (base, "norm"), (base, "rotary_emb")):
        if owner is None or not hasattr(owner, attr):
            return f"{type(model).__name__} has no {attr}"
    if type(base.norm).__name__ not in NORMS:
        return f"final norm {type(base.norm).__name__} is not a known RMSNorm"
    for i, layer in enumerate(base.layers):
        missing = [p for p in _LAYER_PARTS if not hasattr(layer, p)]
        if missing:
            return f"layer {i} has no {', '.join(missing)}"
        if type(layer.self_attn).__name__ not in ATTENTIONS:
            return f"layer {i}: attention {type(layer.self_attn).__name__} is not a Llama-pattern attention"
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if type(norm).__name__ not in NORMS:
                return f"layer {i}: norm {type(norm).__name__} is not a known RMSNorm"
    return None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm: statistics in float32, scaled in the input dtype."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


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
class _Layer:
    index: int
    norm1: torch.Tensor
    norm1_eps: float
    norm2: torch.Tensor
    norm2_eps: float
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    o_proj: torch.nn.Linear
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    window: int
    mlp: torch.nn.Module
    gate_up_weight: torch.Tensor | None  # None: `mlp` is called as it is (MoE blocks)
    gate_up_bias: torch.Tensor | None
    act: Callable | None


def _layer(index: int, layer) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    qkv_weight, qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
    head_dim = attn.head_dim
    gate_up_weight = gate_up_bias = act = None
    if type(mlp).__name__ in DENSE_MLPS:
        gate_up_weight, gate_up_bias = _fuse([mlp.gate_proj, mlp.up_proj])
        act = mlp.act_fn
    return _Layer(
        index=index,
        norm1=layer.input_layernorm.weight,
        norm1_eps=layer.input_layernorm.variance_epsilon,
        norm2=layer.post_attention_layernorm.weight,
        norm2_eps=layer.post_attention_layernorm.variance_epsilon,
        qkv_weight=qkv_weight,
        qkv_bias=qkv_bias,
        o_proj=attn.o_proj,
        heads=attn.q_proj.out_features // head_dim,
        kv_heads=attn.k_proj.out_features // head_dim,
        head_dim=head_dim,
        scaling=attn.scaling,
        window=int(ATTENTIONS[type(attn).__name__](attn) or 0),
        mlp=mlp,
        gate_up_weight=gate_up_weight,
        gate_up_bias=gate_up_bias,
        act=act,
    )


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [T, heads, D] with cos/sin [T, 1, D] (transformers' formula)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class PackedDecoder:
    """The forward pass of a Llama-pattern causal LM over a packed batch.

    `decoder(input_ids [T], positions [T], meta, logits_rows [n]) -> logits [n, vocab]`,
    where `meta` is the step's `AttentionMetadata` and `attend` the paged attention function
    (`tideflow.runtime.engine.attention.make_attend`)."""

    def __init__(self, model, attend: Callable):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"PackedDecoder cannot run this model: {reason}")
        base = _decoder(model)
        self.embed = base.embed_tokens
        self.rotary = base.rotary_emb
        self.norm, self.norm_eps = base.norm.weight, base.norm.variance_epsilon
        self.lm_head = model.lm_head
        self.attend = attend
        with torch.no_grad():
            self.layers = [_layer(i, layer) for i, layer in enumerate(base.layers)]

    @torch.inference_mode()
    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta, logits_rows: torch.Tensor, images=None
    ) -> torch.Tensor:
        """`images`: (rows [k], features [k, hidden]) whose features replace the embeddings of
        those rows (a multimodal prompt's image tokens), or None."""
        h = self.embed(input_ids)  # [T, hidden]
        if images is not None:
            h[images[0]] = images[1].to(h.dtype)
        cos, sin = self.rotary(h, positions[None])
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [T, 1, D]
        for layer in self.layers:
            h = h + self._attention(layer, _rms_norm(h, layer.norm1, layer.norm1_eps), cos, sin, meta)
            h = h + self._mlp(layer, _rms_norm(h, layer.norm2, layer.norm2_eps))
        h = _rms_norm(h[logits_rows], self.norm, self.norm_eps)
        return self.lm_head(h)

    def _attention(self, layer: _Layer, x, cos, sin, meta) -> torch.Tensor:
        tokens, d = x.shape[0], layer.head_dim
        qkv = F.linear(x, layer.qkv_weight, layer.qkv_bias)
        qk_heads = layer.heads + layer.kv_heads
        qk = _rotate(qkv[:, : qk_heads * d].view(tokens, qk_heads, d), cos, sin)
        v = qkv[:, qk_heads * d :].view(tokens, layer.kv_heads, d)
        out = self.attend(qk[:, : layer.heads], qk[:, layer.heads :], v, layer.index, meta, layer.scaling, layer.window)
        return layer.o_proj(out.view(tokens, layer.heads * d))

    @staticmethod
    def _mlp(layer: _Layer, x) -> torch.Tensor:
        if layer.gate_up_weight is None:
            out = layer.mlp(x[None])
            return (out[0] if isinstance(out, tuple) else out)[0]
        gate, up = F.linear(x, layer.gate_up_weight, layer.gate_up_bias).chunk(2, dim=-1)
        return layer.mlp.down_proj(layer.act(gate) * up)
