"""Image inputs of a prompt: where their tokens sit, what identifies them, and their features.

A LLaVA-style prompt holds one image token per feature row of each image (the HF processor
expands each `<image>` placeholder into `tokens_per_image` copies). tideflow accepts either
form: one placeholder per image, expanded here, or the already expanded run. Prefill
replaces the embeddings at those positions with the image's features.

Torch-free (the engine's `PromptImages` runs the vision tower): the scheduler and the block manager read `ImageInputs` (spans and hashes for
prefix caching); only the model runner touches `features`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from tideflow.models.image_spec import IMAGE_FIELD, ImagePromptSpec


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


def image_bytes(image: Any) -> bytes:
    """An image as encoded bytes for an Arrow `binary` column: bytes as they are, a PIL image
    as lossless PNG (so the pixels that arrive are the pixels sent)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
