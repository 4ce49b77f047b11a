"""The image side of a LLaVA-style model: decode images, preprocess them with the checkpoint's
own image processor, and run the vision tower and projector (`get_image_features`).

The engine uses it to encode a request's images in-process; the Encoder role uses it to
encode them in a separate actor, which then holds only the vision tower and projector (the
language model is dropped after loading).
"""

from __future__ import annotations

import io
from typing import Any

import torch

from tideflow.models.image_spec import IMAGE_FIELD, ImagePromptSpec


class ImageDecodeError(ValueError):
    """Bytes that are not an image Pillow can read; `reason` says why."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"{IMAGE_FIELD}: image {index} could not be decoded: {reason}")
        self.reason = reason


def decode_image(image: Any, index: int = 0):
    """A PIL image from encoded bytes (PNG, JPEG ...) or a PIL image as it is. Raises
    ImageDecodeError (a ValueError) naming image `index` when Pillow cannot read the bytes."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(image, (bytes, bytearray, memoryview)):
        return image
    try:
        decoded = Image.open(io.BytesIO(bytes(image)))
        decoded.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageDecodeError(index, str(exc)) from None
    return decoded


class ImageEncoder:
    """Images -> per-image features [tokens_per_image, text hidden size], as the model's own
    forward computes them before merging them into the prompt's embeddings."""

    def __init__(self, model, image_processor, spec: ImagePromptSpec):
        """`model`: a LLaVA-style model (`model.model.get_image_features`); `image_processor`:
        the checkpoint's; `spec`: the model's image layout in prompts."""
        self.model = model
        self.image_processor = image_processor
        self.spec = spec
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device

    @classmethod
    def for_model(cls, model, path: str, trust_remote_code: bool = False) -> ImageEncoder:
        """The encoder of an already loaded model (sharing its weights)."""
        from transformers import AutoImageProcessor

        spec = ImagePromptSpec.from_config(model.config)
        if spec is None:
            raise ValueError(f"{type(model).__name__} has no vision tower")
        processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        return cls(model, processor, spec)

    @classmethod
    def load(cls, path: str, *, dtype: str = "auto", device: str = "cpu", trust_remote_code: bool = False) -> ImageEncoder:
        """Load a checkpoint's vision tower and projector only: the language model and the LM
        head are dropped once the weights are read."""
        from tideflow.models.loader import load_model

        model, _ = load_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "get_image_features"):
            raise ValueError(f"model {path!r} ({type(model).__name__}) has no vision tower")
        inner.language_model = None
        model.lm_head = None
        return cls.for_model(model, path, trust_remote_code)

    @torch.inference_mode()
    def encode(self, images: list) -> list[torch.Tensor]:
        """Features of each image (PIL images or encoded bytes), in order."""
        if not images:
            return []
        pil = [decode_image(image, i) for i, image in enumerate(images)]
        try:
            pixels = self.image_processor(images=pil, return_tensors="pt")["pixel_values"]
        except (ValueError, TypeError, OSError) as exc:
            raise ValueError(f"{IMAGE_FIELD}: the image processor rejected the images: {exc}") from None
        out = self.model.model.get_image_features(pixel_values=pixels.to(self.device), return_dict=True)
        features = out.pooler_output if hasattr(out, "pooler_output") else out
        features = [f.to(self.dtype) for f in features]
        for i, f in enumerate(features):
            if f.shape[0] != self.spec.tokens_per_image:
                raise ValueError(
                    f"{IMAGE_FIELD}: image {i} gave {f.shape[0]} feature rows; the model's prompts hold "
                    f"{self.spec.tokens_per_image} tokens per image"
                )
        return features
