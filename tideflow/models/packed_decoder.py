"""tideflow's own forward pass for Llama-pattern decoders, over the packed batch.

transformers' modules are written for `[batch, seq, hidden]` inputs and cost a Python call,
keyword plumbing and a few small tensor ops per module. On a CPU at decode batch sizes that
overhead is a large share of a step. For architectures whose layers follow the Llama pattern
(pre-norm RMSNorm; rotary attention with optional q/k/v bias; a gated MLP or any MoE block),
`PackedDecoder` runs the same weights on `[tokens, hidden]` with fewer, larger ops:

- q, k and v come from one matmul, gate and up from another (separate transformers projections
  are re-pointed at views of the fused tensors, so no weight is held twice; Phi-3's fused ones
  are used as they are);
- per-head q/k norms (Qwen3) normalise every q and k head in one call;
- rotary embedding rotates q and k in one pass, with cos/sin from the model's own rotary
  module (so every rope scaling type transformers knows works unchanged, partial rotary too);
- attention goes straight to tideflow's paged attention (`runtime.attention.make_attend`);
- logits are computed only at the rows that sample;
- MoE blocks (and any MLP it does not know) are called as they are.

The architectures it runs, and how each maps onto it, are the tables of
`tideflow.models.decoder_layouts`: Llama, Mistral, Mixtral, Qwen2, Qwen2-MoE, Qwen3, Gemma (v1)
and Phi-3. Numerics follow transformers: each norm computes as its transformers class does
(float32 statistics, also for float64 weights), the embedding module is called as it is (so
Gemma's scaled embeddings stay scaled), residual adds keep their order, and each layer gets the
sliding window transformers would pass its attention function. `unsupported_reason(model)`
says why a model cannot run here (soft-capping, as in Gemma 2, is one reason); the engine then
keeps the transformers forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from tideflow.kernels.norm_rope import add_rms_norm, rope_and_cache
from tideflow.models.prepacked_linear import PrepackedLinear, prepacking_available
from tideflow.models.decoder_layouts import (
    ATTENTIONS,
    MLPS,
    NORMS,
    UNSUPPORTED_CONFIG,
    Norm,
    make_head_norm,
    make_norm,
    rms_norm,
)

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
    text = model.config.get_text_config()
    for field, what in UNSUPPORTED_CONFIG.items():
        if getattr(text, field, None) is not None:
            return f"{type(model).__name__} uses {what}"
    if type(base.norm).__name__ not in NORMS:
        return f"final norm {type(base.norm).__name__} is not a known RMSNorm"
    for i, layer in enumerate(base.layers):
        reason = _layer_reason(layer)
        if reason is not None:
            return f"layer {i}: {reason}"
    return None


def _layer_reason(layer) -> str | None:
    missing = [p for p in _LAYER_PARTS if not hasattr(layer, p)]
    if missing:
        return f"has no {', '.join(missing)}"
    # a part the Llama residual pattern has no place for (Gemma 2's pre/post feed-forward norms)
    extra = [n for n, m in layer.named_children() if n not in _LAYER_PARTS and not isinstance(m, torch.nn.Dropout)]
    if extra:
        return f"{type(layer).__name__} also has {', '.join(extra)}"
    attn = layer.self_attn
    if type(attn).__name__ not in ATTENTIONS:
        return f"attention {type(attn).__name__} is not a Llama-pattern attention"
    norms = [layer.input_layernorm, layer.post_attention_layernorm]
    if ATTENTIONS[type(attn).__name__].head_norms:
        norms += [attn.q_norm, attn.k_norm]
    for norm in norms:
        if type(norm).__name__ not in NORMS:
            return f"norm {type(norm).__name__} is not a known RMSNorm"
    return None


@dataclass(slots=True)
class _Layer:
    index: int
    norm1: Norm
    norm2: Norm
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    head_norm: Norm | None  # over [T, heads + kv_heads, head_dim], before rotary (Qwen3)
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
    layout = ATTENTIONS[type(attn).__name__]
    qkv = layout.qkv(attn)
    head_norm = make_head_norm(attn.q_norm, attn.k_norm, qkv.heads, qkv.kv_heads) if layout.head_norms else None
    gate_up_weight = gate_up_bias = act = None
    if type(mlp).__name__ in MLPS:
        gate_up_weight, gate_up_bias, act = MLPS[type(mlp).__name__](mlp)
    return _Layer(
        index=index,
        norm1=make_norm(layer.input_layernorm),
        norm2=make_norm(layer.post_attention_layernorm),
        qkv_weight=qkv.weight,
        qkv_bias=qkv.bias,
        head_norm=head_norm,
        o_proj=attn.o_proj,
        heads=qkv.heads,
        kv_heads=qkv.kv_heads,
        head_dim=attn.head_dim,
        scaling=attn.scaling,
        window=int(layout.window(attn) or 0),
        mlp=mlp,
        gate_up_weight=gate_up_weight,
        gate_up_bias=gate_up_bias,
        act=act,
    )


@dataclass(slots=True)
class _Linears:
    """A layer's projections as the fused path calls them: each maps [T, in] to [T, out]."""

    qkv: Callable
    o: Callable
    gate_up: Callable | None  # None: `mlp` is called as it is (MoE blocks)
    down: Callable | None

    @classmethod
    def plain(cls, layer: _Layer) -> "_Linears":
        """The layer's own weights through `F.linear` (this torch has no oneDNN)."""
        gate_up = None if layer.gate_up_weight is None else partial(F.linear, weight=layer.gate_up_weight, bias=layer.gate_up_bias)
        return cls(partial(F.linear, weight=layer.qkv_weight, bias=layer.qkv_bias), layer.o_proj, gate_up,
                   None if gate_up is None else layer.mlp.down_proj)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [T, heads, D] with cos/sin [T, 1, D] (transformers' formula)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _rotate_part(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Partial rotary: the first cos.shape[-1] dims of each head rotate, the rest pass."""
    r = cos.shape[-1]
    return torch.cat((_rotate(x[..., :r], cos, sin), x[..., r:]), dim=-1)


class PackedDecoder:
    """The forward pass of a Llama-pattern causal LM over a packed batch.

    `decoder(input_ids [T], positions [T], meta, logits_rows [n]) -> logits [n, vocab]`,
    where `meta` is the step's `AttentionMetadata` and `attend` the paged attention function
    (`tideflow.runtime.engine.attention.make_attend`).

    `fused=True` (float32 on CPU with tideflow's kernels) runs the work between the matmuls as
    fused kernels (`tideflow.kernels.norm_rope`): each residual add with the norm after it,
    and the rotary embedding with the cache write, where the model's layers allow it (Llama
    norms, rotary over the whole head, no per-head q/k norms); other models keep the op-by-op
    path, which is also the float64 path (transformers' exact rounding)."""

    def __init__(self, model, attend: Callable, fused: bool = False):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"PackedDecoder cannot run this model: {reason}")
        base = _decoder(model)
        self.embed = base.embed_tokens
        self.rotary = base.rotary_emb
        self.lm_head = model.lm_head
        self.attend = attend
        with torch.no_grad():
            self.norm = make_norm(base.norm)
            self.layers = [_layer(i, layer) for i, layer in enumerate(base.layers)]
        rotary_dims = 2 * base.rotary_emb.inv_freq.shape[-1]
        self.rotate = _rotate if rotary_dims == self.layers[0].head_dim else _rotate_part
        self.fused = fused and self._fusable()
        self.lm_head_packed = None
        self.linears = self._linears() if self.fused else None

    def _linears(self) -> list[_Linears]:
        """Each layer's projections as the fused path calls them: oneDNN-prepacked weights
        (`PrepackedLinear`, the LM head's too) where this torch has oneDNN, else `F.linear`."""
        if not prepacking_available():
            return [_Linears.plain(layer) for layer in self.layers]
        with torch.no_grad():
            self.lm_head_packed = PrepackedLinear.of(self.lm_head)
            return [
                _Linears(
                    qkv=PrepackedLinear(layer.qkv_weight, layer.qkv_bias),
                    o=PrepackedLinear.of(layer.o_proj) or layer.o_proj,
                    gate_up=None if layer.gate_up_weight is None else PrepackedLinear(layer.gate_up_weight, layer.gate_up_bias),
                    down=None if layer.gate_up_weight is None else PrepackedLinear.of(layer.mlp.down_proj) or layer.mlp.down_proj,
                )
                for layer in self.layers
            ]

    def _fusable(self) -> bool:
        norms = [self.norm] + [n for layer in self.layers for n in (layer.norm1, layer.norm2)]
        return (
            self.rotate is _rotate
            and all(getattr(n, "func", None) is rms_norm for n in norms)
            and all(layer.head_norm is None for layer in self.layers)
        )

    @torch.inference_mode()
    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta, logits_rows: torch.Tensor, images=None,
        hidden_rows: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`images`: (rows [k], features [k, hidden]) whose features replace the embeddings of
        those rows (a multimodal prompt's image tokens), or None. With `hidden_rows`, returns
        (logits, the final hidden states of those rows after the last norm)."""
        h = self.embed(input_ids)  # [T, hidden]
        if images is not None:
            h[images[0]] = images[1].to(h.dtype)
        cos, sin = self.rotary(h, positions[None])
        if self.fused:
            h = self._layers_fused(h, cos[0], sin[0], meta)
        else:
            cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [T, 1, D]
            for layer in self.layers:
                h = h + self._attention(layer, layer.norm1(h), cos, sin, meta)
                h = h + self._mlp(layer, layer.norm2(h))
        head = self.lm_head_packed if self.fused and self.lm_head_packed is not None else self.lm_head
        logits = head(self.norm(h[logits_rows]))
        return logits if hidden_rows is None else (logits, self.norm(h[hidden_rows]))

    def _layers_fused(self, h, cos, sin, meta) -> torch.Tensor:
        """Every layer, residual adds fused with the norm that follows them (`h` is updated in
        place: the embedding output is this call's own tensor)."""
        x = self.layers[0].norm1(h)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            linears = self.linears[i]
            x = _add_norm(h, self._attention_fused(layer, linears, x, cos, sin, meta), layer.norm2)
            if linears.gate_up is None:
                out = self._mlp(layer, x)
            else:
                gate, up = linears.gate_up(x).chunk(2, dim=-1)
                out = linears.down(layer.act(gate) * up)
            if i < last:
                x = _add_norm(h, out, self.layers[i + 1].norm1)
            else:
                h += out
        return h

    def _attention_fused(self, layer: _Layer, linears: _Linears, x, cos, sin, meta) -> torch.Tensor:
        tokens, d, heads, kv_heads = x.shape[0], layer.head_dim, layer.heads, layer.kv_heads
        qkv = linears.qkv(x)
        cache = meta.kv_cache
        rope_and_cache(qkv, cos, sin, heads, kv_heads, cache.k[layer.index], cache.v[layer.index], meta.slot_mapping)
        q = qkv[:, : heads * d].view(tokens, heads, d)
        k = qkv[:, heads * d : (heads + kv_heads) * d].view(tokens, kv_heads, d)
        v = qkv[:, (heads + kv_heads) * d :].view(tokens, kv_heads, d)
        out = self.attend(q, k, v, layer.index, meta, layer.scaling, layer.window, cached=True)
        return linears.o(out.view(tokens, heads * d))

    def _attention(self, layer: _Layer, x, cos, sin, meta) -> torch.Tensor:
        tokens, d = x.shape[0], layer.head_dim
        qkv = F.linear(x, layer.qkv_weight, layer.qkv_bias)
        qk_heads = layer.heads + layer.kv_heads
        qk = qkv[:, : qk_heads * d].view(tokens, qk_heads, d)
        if layer.head_norm is not None:
            qk = layer.head_norm(qk)
        qk = self.rotate(qk, cos, sin)
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


def _add_norm(h: torch.Tensor, delta: torch.Tensor, norm) -> torch.Tensor:
    """`h += delta`, then the Llama RMSNorm `norm` (a `make_norm` partial) of the sum."""
    return add_rms_norm(h, delta, norm.keywords["weight"], norm.keywords["eps"])
