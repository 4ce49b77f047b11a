"""Image inputs of a prompt: where their tokens sit, what identifies them, and their features.

A LLaVA-style prompt holds one image token per feature row of each image (the HF processor
expands each `<image>` placeholder into `tokens_per_image` copies). tideflow accepts either
form: one placeholder per image, expanded here, or the already expanded run. Prefill
replaces the embeddings at those positions with the image's features.

Torch-free: the scheduler and the block manager read `ImageInputs` (spans and hashes for
prefix caching); only the model runner touches `features`.
"""

from __future__ import annotations

import hashlib
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
        for a text-only model. Tokens per image follow the processor: one per patch, plus the
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


@dataclass(slots=True, eq=False)
class ImageInputs:
    """The images of one prompt, shared by the prompt's sequences."""

    hashes: list[bytes]  # image i -> content hash (prefix caching, encoder cache)
    spans: list[tuple[int, int]]  # image i -> [start, end) of its tokens in the prompt
    features: Any = None  # image i -> tensor [end - start, hidden]; None until encoded

    def block_key(self, start: int, end: int) -> bytes:
        """What the KV block holding token positions [start, end) depends on besides its
        tokens: the hashes of the images it overlaps (b"" when none)."""
        return b"".join(h for h, (s, e) in zip(self.hashes, self.spans) if s < end and e > start)


def expand_image_tokens(ids: list[int], spec: ImagePromptSpec, num_images: int) -> tuple[list[int], list[tuple[int, int]]]:
    """The prompt with every image placeholder expanded to `tokens_per_image` tokens, and each
    image's span. A run of image tokens is one placeholder (expanded) or an already expanded
    image (kept). Raises ValueError naming the field when the runs do not match the images."""
    runs = _runs(ids, spec.image_token_id)
    n = spec.tokens_per_image
    if num_images == 0:
        if runs:
            raise ValueError(
                f"{IMAGE_FIELD}: the prompt holds image tokens (id {spec.image_token_id}) but no images were given"
            )
        return ids, []
    bad = [length for _, length in runs if length not in (1, n)]
    if bad:
        raise ValueError(
            f"{IMAGE_FIELD}: a run of {bad[0]} image tokens in the prompt; each image takes one placeholder "
            f"or {n} image tokens"
        )
    if len(runs) != num_images:
        raise ValueError(
            f"{IMAGE_FIELD}: the prompt has {len(runs)} image placeholder(s) for {num_images} image(s)"
        )
    out: list[int] = []
    spans = []
    prev = 0
    for start, length in runs:
        out.extend(ids[prev:start])
        spans.append((len(out), len(out) + n))
        out.extend([spec.image_token_id] * n)
        prev = start + length
    out.extend(ids[prev:])
    return out, spans


def _runs(ids: list[int], token_id: int) -> list[tuple[int, int]]:
    """(start, length) of every maximal run of `token_id` in `ids`."""
    runs = []
    i, total = 0, len(ids)
    while i < total:
        if ids[i] == token_id:
            j = i
            while j < total and ids[j] == token_id:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


def image_hash(image: Any) -> bytes:
    """A content hash of an image: of its encoded bytes when given bytes, else of a PIL
    image's mode, size and pixels. (The same picture as bytes and as a PIL image hashes
    differently; that only costs a cache miss.)"""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(image, (bytes, bytearray, memoryview)):
        h.update(b"bytes:")
        h.update(image)
    elif hasattr(image, "tobytes") and hasattr(image, "mode") and hasattr(image, "size"):
        h.update(f"pil:{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
        h.update(image.tobytes())
    else:
        raise ValueError(f"{IMAGE_FIELD}: an image must be a PIL image or encoded bytes, got {type(image).__name__}")
    return h.digest()


def check_images(images: Any) -> list:
    """The images of a request as a list (None -> []); ValueError naming the field otherwise."""
    if images is None:
        return []
    if isinstance(images, (bytes, bytearray)) or hasattr(images, "tobytes"):
        return [images]
    if not isinstance(images, (list, tuple)):
        raise ValueError(f"{IMAGE_FIELD}: 'image' must be an image or a list of images, got {type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, (bytes, bytearray)) and not hasattr(image, "tobytes"):
            raise ValueError(
                f"{IMAGE_FIELD}: image {i} must be a PIL image or encoded bytes, got {type(image).__name__}"
            )
    return list(images)


class PromptImages:
    """One engine's handling of request images: expands placeholders, checks counts, and
    encodes images in-process when no encoder stage sent their features."""

    def __init__(self, hf_config: Any, model: Any, model_path: str, trust_remote_code: bool = False):
        self.spec = ImagePromptSpec.from_config(hf_config)
        self.model = model
        self.model_path = model_path
        self.trust_remote_code = trust_remote_code
        self.architecture = type(model).__name__
        self.encoder = None  # tideflow.models.vision.ImageEncoder, built on the first image
        self.num_encoded = 0  # images this engine encoded itself

    def prepare(self, ids: list[int], images: Any, features: list | None = None) -> tuple[list[int], ImageInputs | None]:
        """The prompt with its image placeholders expanded, and its `ImageInputs` (None without
        images; features still None unless given). Raises ValueError naming the field: images
        for a text-only model, placeholders that do not match the images, wrong feature shapes."""
        images = check_images(images)
        if self.spec is None:
            if images:
                raise ValueError(f"{IMAGE_FIELD}: the model ({self.architecture}) takes no images")
            return ids, None
        ids, spans = expand_image_tokens(ids, self.spec, len(images))
        if not images:
            return ids, None
        if features is not None:
            features = self._check_features(features, len(images))
        return ids, ImageInputs([image_hash(image) for image in images], spans, features)

    def _check_features(self, features: list, num_images: int) -> list:
        import torch

        if len(features) != num_images:
            raise ValueError(f"{IMAGE_FIELD}: {len(features)} image features for {num_images} images")
        out = [torch.as_tensor(f) for f in features]
        for i, f in enumerate(out):
            if f.dim() != 2 or f.shape[0] != self.spec.tokens_per_image:
                raise ValueError(
                    f"{IMAGE_FIELD}: features of image {i} have shape {tuple(f.shape)}; expected "
                    f"[{self.spec.tokens_per_image}, hidden]"
                )
        return out

    def encode(self, inputs: ImageInputs | None, images: Any) -> None:
        """Fill in `inputs.features` by running the model's vision tower on `images`, unless
        an encoder stage already sent them."""
        if inputs is None or inputs.features is not None:
            return
        if self.encoder is None:
            from tideflow.models.vision import ImageEncoder

            self.encoder = ImageEncoder.for_model(self.model, self.model_path, self.trust_remote_code)
        images = check_images(images)
        inputs.features = self.encoder.encode(images)
        self.num_encoded += len(images)


def image_bytes(image: Any) -> bytes:
    """An image as encoded bytes for an Arrow `binary` column: bytes as they are, a PIL image
    as lossless PNG (so the pixels that arrive are the pixels sent)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
