"""Tiny random Hugging Face checkpoints for tests.

`write_tiny_model` writes a complete model directory (config, float32 safetensors weights,
generation config and a real byte-level BPE tokenizer with a ChatML chat template) that
`load_model` / `load_tokenizer` and `transformers` load offline. Nothing is downloaded: the
tokenizer is trained in-process on a bundled English snippet plus the source of a fixed list
of standard-library modules, once per process.

Token ids are fixed: the special tokens come first, in the order of `SPECIAL_TOKENS`.
The tokenizer adds no BOS when encoding (like Qwen's); prompts that want one add it.
The vocabulary depends on the standard library's source text, so it is identical between
runs of one Python installation but may differ between Python minor versions.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import importlib.util
import json
import pathlib
from typing import Any

KINDS = ("llama", "qwen2", "mixtral", "qwen2_moe", "mistral", "qwen3", "gemma", "phi3")
MULTIMODAL_KINDS = ("llava",)  # image-text-to-text models; written by `tideflow.testing.tiny_llava`

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<s>", "</s>", "<pad>"
IM_START_TOKEN, IM_END_TOKEN = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IM_START_TOKEN, IM_END_TOKEN)  # id == index
BOS_ID, EOS_ID, PAD_ID, IM_START_ID, IM_END_ID = range(len(SPECIAL_TOKENS))

TOKENIZER_VOCAB_SIZE = 512  # special tokens + 256 byte symbols + merges

# With the usual std of 0.02 a tiny random model's greedy decoding often locks onto one
# token; at 0.2 every kind gives 20+ distinct tokens in 30 greedy steps (seeds 0-4, six
# random prompts) and almost never emits EOS, which keeps parity tests meaningful.
INITIALIZER_RANGE = 0.2

# ChatML; `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Tokenizer training text: pure-Python stdlib modules present in every CPython install.
_CORPUS_MODULES = (
    "textwrap",
    "json.decoder",
    "json.encoder",
    "argparse",
    "string",
    "functools",
    "dataclasses",
    "heapq",
    "bisect",
    "shlex",
    "fnmatch",
    "contextlib",
)
_CORPUS_MAX_CHARS = 400_000

# Fields shared by every kind; per-kind fields below are applied on top.
_COMMON_FIELDS: dict[str, Any] = {
    "vocab_size": TOKENIZER_VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    "initializer_range": INITIALIZER_RANGE,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
    "dtype": "float32",
}
_KIND_FIELDS: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {"use_sliding_window": False},  # q/k/v biases are built in to Qwen2
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "shared_expert_intermediate_size": 64,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "qkv_bias": True,
        "use_sliding_window": False,
    },
    "mistral": {"sliding_window": 32},  # every layer attends through the window
    "qwen3": {"head_dim": 16},  # per-head q/k RMSNorms are built in to Qwen3
    "gemma": {"head_dim": 16},  # GeGLU, scaled embeddings and (1 + weight) norms are built in
    # fused qkv_proj and gate_up_proj are built in; half of each head's dims rotate (as Phi-4-mini's)
    "phi3": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
}
# Kinds whose norm weights are drawn around their initial value rather than left at it (ones,
# or Gemma's zeros), so parity tests see every norm weight used. The earlier kinds keep their
# initial norms: their checkpoints stay byte-identical to what they were.
_RANDOM_NORM_KINDS = frozenset({"mistral", "qwen3", "gemma", "phi3"})


def _corpus() -> list[str]:
    """The tokenizer's training documents, at most `_CORPUS_MAX_CHARS` characters in all."""
    data = importlib.resources.files("tideflow.testing") / "data" / "tiny_corpus.txt"
    docs = [data.read_text(encoding="utf-8")]
    budget = _CORPUS_MAX_CHARS - len(docs[0])
    for name in _CORPUS_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue  # a stripped install without sources; train on what there is
        text = pathlib.Path(spec.origin).read_text(encoding="utf-8")[:budget]
        docs.append(text)
        budget -= len(text)
        if budget <= 0:
            break
    return docs


def train_bpe_tokenizer(docs, vocab_size: int):
    """A byte-level BPE tokenizer (`tokenizers.Tokenizer`) trained on `docs`, with
    `SPECIAL_TOKENS` first so their ids are the same in every tokenizer tideflow builds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return tokenizer


@functools.cache
def tokenizer_json() -> str:
    """The trained tokenizer, serialized as a `tokenizer.json` string (cached per process)."""
    return train_bpe_tokenizer(_corpus(), TOKENIZER_VOCAB_SIZE).to_str()


def _tokenizer_size() -> int:
    """Number of ids of the trained tokenizer."""
    return len(json.loads(tokenizer_json())["model"]["vocab"])


def tiny_config(kind: str, **config_overrides: Any):
    """The `transformers` config of a tiny `kind` model, with `config_overrides` applied.

    Raises ValueError for an unknown kind, an override that names no field of the config
    class, or a `vocab_size` smaller than the tokenizer's.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected one of {KINDS}")
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[kind]
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(config_overrides) - known)
    if unknown:
        raise ValueError(f"{config_class.__name__} has no field(s) {unknown}")
    fields = {**_COMMON_FIELDS, **_KIND_FIELDS[kind], **config_overrides}
    if fields["vocab_size"] < _tokenizer_size():
        raise ValueError(
            f"vocab_size {fields['vocab_size']} is smaller than the tokenizer's {_tokenizer_size()}"
        )
    return config_class(**fields)


def _write_tokenizer(
    path: pathlib.Path, model_max_length: int, serialized: str | None = None, extra_special_tokens: tuple[str, ...] = ()
) -> None:
    """Write tokenizer.json and tokenizer_config.json (with the chat template) into `path`.
    `serialized`: a tokenizer.json string other than the shared one (one with added tokens)."""
    (path / "tokenizer.json").write_text(serialized or tokenizer_json(), encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "extra_special_tokens": [IM_START_TOKEN, IM_END_TOKEN, *extra_special_tokens],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
    text = json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n"
    (path / "tokenizer_config.json").write_text(text, encoding="utf-8")


def _save_quietly(model: Any, path: pathlib.Path) -> None:
    """`model.save_pretrained(path)` without its progress bar (the setting is restored)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def write_tiny_model(
    kind: str, path: str | pathlib.Path, seed: int = 0, *, weights_dtype: str = "float32", init_device: str = "cpu",
    **config_overrides: Any,
) -> pathlib.Path:
    """Write a random tiny `kind` checkpoint into `path` (created if needed) and return it.

    The directory holds config.json, model.safetensors (float32), generation_config.json and
    the tokenizer files. The same `kind`, `seed` and overrides give byte-identical weights.
    `config_overrides` replace fields of the config (see `tiny_config`).
    `weights_dtype` and `init_device` are for large random models (the GPU check's 1B Llama):
    weights drawn on `init_device` ("cuda" draws a billion in well under a second, and its
    generator gives other weights than the CPU's) and saved as `weights_dtype`; pass a matching
    `dtype=` override so that config.json says the same.

    `kind` may also be one of `MULTIMODAL_KINDS` ("llava": a tiny CLIP vision tower and
    projector in front of the tiny Llama, with its image processor; see
    `tideflow.testing.tiny_llava`). Those are not in `KINDS`, which lists causal LMs.
    """
    if kind in MULTIMODAL_KINDS:
        from tideflow.testing.tiny_llava import write_tiny_llava

        return write_tiny_llava(path, seed=seed, **config_overrides)
    config = tiny_config(kind, **config_overrides)
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with torch.device(init_device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, weights_dtype))
    if kind in _RANDOM_NORM_KINDS:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.add_(torch.randn_like(param) * INITIALIZER_RANGE)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    _save_quietly(model, path)
    _write_tokenizer(path, config.max_position_embeddings)
    return path
