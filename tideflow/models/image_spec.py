"""How a multimodal (LLaVA-style) checkpoint lays images out in its prompts. Torch-free: the
engine core reads it to expand image placeholders and key prefix-cache blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE_FIELD = "multi_modal_data"  # the request field errors about images name


@dataclass(frozen=True, slots=True)
class ImagePromptSpec:
    """How a multimodal model lays images out in its prompts."""

    image_token_id: int  # the placeholder token
    tokens_per_image: int  # feature rows (and so prompt tokens) per image

    @classmethod
    def from_config(cls, hf_config: Any) -> ImagePromptSpec | None:
        """The spec of a LLaVA-style config (a `vision_config` and an image token id); None
        for a text-only model. `hf_config`: a transformers config or a `JsonConfig`. Tokens per image follow the processor: one per patch, plus the
        CLS token unless the "default" feature strategy drops it."""
        vision = getattr(hf_config, "vision_config", None)
        token_id = getattr(hf_config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(hf_config, "image_token_index", None)
        if vision is None or token_id is None:
            return None
        image_size, patch_size = _side(vision.image_size), _side(vision.patch_size)
        tokens = (image_size // patch_size) ** 2
        if getattr(hf_config, "vision_feature_select_strategy", "default") != "default":
            tokens += 1  # "full" keeps the CLS row
        return cls(int(token_id), tokens)


def _side(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)
