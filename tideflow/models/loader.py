"""Load a Hugging Face causal LM and its tokenizer, and read what the engine needs from them.

`load_model` / `load_tokenizer` accept a local model directory or, where a network (or a
warm cache) exists, a hub id of the form `org/name`. `torch` and `transformers` are
imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tideflow.config import KERNEL_BACKENDS

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

DTYPES = ("auto", "float32", "float64", "bfloat16", "float16")
_HALF_DTYPE_NAMES = ("float16", "bfloat16")

# `org/name`, as the hub spells repo ids; anything else that is not a directory is an error.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Config attributes that hold the context length, most common first.
_MAX_LEN_ATTRS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "max_sequence_length",
    "seq_length",
    "n_ctx",
)
DEFAULT_MAX_LEN = 2048


def _source(path_or_id: str, required_file: str | None) -> str:
    """Check a local model directory (and `required_file` in it) or pass a hub id through.

    Raises ValueError naming `path_or_id` when it is neither an existing directory nor
    shaped like `org/name`, or when the directory lacks `required_file`.
    """
    path = os.path.expanduser(path_or_id)
    if os.path.isdir(path):
        if required_file is not None and not os.path.isfile(os.path.join(path, required_file)):
            raise ValueError(f"model directory {path_or_id!r} has no {required_file}")
        return path
    if _HUB_ID.match(path_or_id):
        return path_or_id
    raise ValueError(f"model path {path_or_id!r} does not exist (and is not an org/name hub id)")


def load_tokenizer(path_or_id: str, trust_remote_code: bool = False):
    """The `transformers` tokenizer (AutoTokenizer) of a model directory or hub id."""
    from transformers import AutoTokenizer

    source = _source(path_or_id, required_file=None)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def _dtype_name(value: Any) -> str | None:
    """`torch.bfloat16`, `"bfloat16"` or `"torch.bfloat16"` -> `"bfloat16"`; else None."""
    if value is None or isinstance(value, dict):
        return None
    return str(value).removeprefix("torch.")


def resolve_dtype(dtype: str, hf_config: Any, device: str = "cpu") -> torch.dtype:
    """The torch dtype to load weights in.

    `dtype` is one of `DTYPES`. "auto" takes the checkpoint's dtype from the config
    (`dtype`, or the older `torch_dtype`); on a CPU device half types (float16, bfloat16)
    become float32, and a missing or unknown checkpoint dtype is float32.
    """
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return getattr(torch, dtype)
    # Read `torch_dtype` from the instance dict only: the v5 property logs a deprecation.
    name = _dtype_name(getattr(hf_config, "dtype", None))
    if name is None:
        name = _dtype_name(vars(hf_config).get("torch_dtype") if hasattr(hf_config, "__dict__") else None)
    if name not in DTYPES or name == "auto":
        return torch.float32
    if name in _HALF_DTYPE_NAMES and torch.device(device).type == "cpu":
        return torch.float32
    return getattr(torch, name)


def load_model(
    path_or_id: str,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    kernel_backend: str = "auto",
) -> tuple[PreTrainedModel, PretrainedConfig]:
    """Load a causal LM (or an image-text-to-text model such as LLaVA) in eval mode on
    `device`; return `(model, model.config)`.

    `attn_implementation` is any name `transformers` knows, including one registered with
    `transformers.AttentionInterface.register`; None keeps the transformers default.
    `kernel_backend` "auto" runs MoE routing and experts on tideflow's kernels
    (`tideflow.models.experts`); "torch" keeps transformers' own experts.
    Raises ValueError naming the path when a local directory is missing or has no config.json.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from tideflow.models.experts import register_experts, use_tideflow_routing

    if kernel_backend not in KERNEL_BACKENDS:
        raise ValueError(f"kernel_backend must be one of {KERNEL_BACKENDS}, got {kernel_backend!r}")
    source = _source(path_or_id, required_file="config.json")
    hf_config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {}
    vision = getattr(hf_config, "vision_config", None) is not None
    if attn_implementation is not None:
        # a multimodal model: the attention function is the language model's; the vision
        # tower keeps transformers' default
        kwargs["attn_implementation"] = {"text_config": attn_implementation} if vision else attn_implementation
    torch_dtype = resolve_dtype(dtype, hf_config, device)
    moe = _is_moe(hf_config)
    if moe and kernel_backend == "auto":
        kwargs["experts_implementation"] = register_experts()
    elif moe and str(torch_dtype) == "torch.float64":
        kwargs["experts_implementation"] = "eager"  # grouped_mm has no float64 kernel
    auto_class = AutoModelForCausalLM
    if vision:
        from transformers import AutoModelForImageTextToText as auto_class
    model = auto_class.from_pretrained(
        source,
        config=hf_config,
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
        **kwargs,
    )
    if moe and kernel_backend == "auto":
        use_tideflow_routing(model)
    model.to(device)
    model.eval()
    return model, model.config


def _is_moe(hf_config: Any) -> bool:
    return num_routed_experts(hf_config) > 0


def num_routed_experts(hf_config: Any) -> int:
    """Routed experts per MoE layer from the (text) config; 0 for a dense model."""
    text = hf_config.get_text_config()
    for attr in ("num_local_experts", "num_experts", "n_routed_experts"):
        value = getattr(text, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def model_max_len(hf_config: Any) -> int:
    """The model's context length from its config (the text config for multimodal ones);
    `hf_config`: a transformers config or a `JsonConfig` (tideflow.models.json_config)."""
    get_text_config = getattr(hf_config, "get_text_config", None)
    configs = [get_text_config(), hf_config] if callable(get_text_config) else [hf_config]
    for config in configs:
        for attr in _MAX_LEN_ATTRS:
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    return DEFAULT_MAX_LEN


def uniform_sliding_window(hf_config: Any) -> int:
    """The model's sliding window when every layer attends through it, else 0. Only then may
    the engine release the KV blocks that fall wholly before a sequence's window."""
    get_text_config = getattr(hf_config, "get_text_config", None)
    config = get_text_config() if callable(get_text_config) else hf_config
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or window <= 0:
        return 0
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(t != "sliding_attention" for t in layer_types):
        return 0
    return window


def _ids(value: int | Iterable[int] | None) -> set[int]:
    """An eos field (None, one id or a list of ids) as a set."""
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def eos_token_ids(hf_config: Any, generation_config: Any, tokenizer: Any) -> set[int]:
    """Every end-of-sequence id named by the generation config, model config or tokenizer.

    Any of the three may be None; each `eos_token_id` may be None, an int or a list.
    """
    ids: set[int] = set()
    for source in (generation_config, hf_config, tokenizer):
        if source is not None:
            ids |= _ids(getattr(source, "eos_token_id", None))
    return ids


def check_divisible(hf_config, world: int) -> None:
    """Raise ValueError naming `tensor_parallel_size` when `world` does not split the model."""
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise ValueError(f"tensor_parallel_size must be a positive integer, got {world!r}")
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    sizes = {
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        "intermediate_size": getattr(text, "intermediate_size", None),
        "moe_intermediate_size": getattr(text, "moe_intermediate_size", None),
        "shared_expert_intermediate_size": getattr(text, "shared_expert_intermediate_size", None),
    }
    for name, size in sizes.items():
        if size and size % world:
            raise ValueError(f"tensor_parallel_size ({world}) must divide {name} ({size})")
