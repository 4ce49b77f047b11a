"""A tiny random LLaVA checkpoint for tests: a small CLIP vision tower and projector in front of
the tiny Llama of `tideflow.testing.tiny_models`.

The directory holds what a real LLaVA checkpoint holds, so `transformers` loads it offline
through its normal path (`AutoConfig`, `LlavaForConditionalGeneration`, `AutoProcessor`):
config.json, model.safetensors, generation_config.json, the tokenizer (the shared trained
BPE tokenizer plus an `<image>` token right after its vocabulary) and processor_config.json
(the LlavaProcessor's settings with its CLIP image processor nested, as transformers v5
writes them; saved from the PIL backend, so torchvision is not needed).

With the defaults an image is 16x16 pixels after preprocessing, cut into 4x4 patches: 16
image tokens per image ("default" feature strategy: the CLS row is dropped).
"""

from __future__ import annotations

import pathlib
from typing import Any

from tideflow.testing.tiny_models import (
    _COMMON_FIELDS,
    _save_quietly,
    _write_tokenizer,
    BOS_ID,
    EOS_ID,
    INITIALIZER_RANGE,
    PAD_ID,
    tokenizer_json,
)

IMAGE_TOKEN = "<image>"

_VISION_FIELDS: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 16,
    "patch_size": 4,
    "initializer_range": INITIALIZER_RANGE,
    "dtype": "float32",
}


def image_token_id() -> int:
    """The id of `<image>`: the first id after the shared tokenizer's vocabulary."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json()).get_vocab_size()


def tiny_llava_config(**config_overrides: Any):
    """The `LlavaConfig` of the tiny LLaVA. Overrides replace LlavaConfig fields; a dict for
    `text_config` or `vision_config` updates that sub-config's fields."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    image_id = image_token_id()
    text = {**_COMMON_FIELDS, "vocab_size": image_id + 1, **config_overrides.pop("text_config", {})}
    vision = {**_VISION_FIELDS, **config_overrides.pop("vision_config", {})}
    fields = {
        "image_token_id": image_id,
        "image_seq_length": (vision["image_size"] // vision["patch_size"]) ** 2,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": False,
        "dtype": "float32",
        **config_overrides,
    }
    return LlavaConfig(text_config=LlamaConfig(**text), vision_config=CLIPVisionConfig(**vision), **fields)


def _image_processor(size: int):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def write_tiny_llava(path: str | pathlib.Path, seed: int = 0, **config_overrides: Any) -> pathlib.Path:
    """Write a random tiny LLaVA checkpoint (see the module docstring) into `path` and return it."""
    import torch
    from tokenizers import AddedToken, Tokenizer
    from transformers import AutoTokenizer, GenerationConfig, LlavaForConditionalGeneration, LlavaProcessor

    config = tiny_llava_config(**config_overrides)
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    _save_quietly(model, path)

    tokenizer = Tokenizer.from_str(tokenizer_json())
    tokenizer.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    max_len = config.text_config.max_position_embeddings

    def write_tokenizer() -> None:
        _write_tokenizer(path, max_len, tokenizer.to_str(), (IMAGE_TOKEN,))

    write_tokenizer()
    vision = config.vision_config
    processor = LlavaProcessor(
        image_processor=_image_processor(vision.image_size),
        tokenizer=AutoTokenizer.from_pretrained(path),
        patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS row
        image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(path)
    write_tokenizer()  # the processor re-saves the tokenizer in its own format: keep ours
    return path
