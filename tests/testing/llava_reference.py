"""Test images and the transformers reference for the tiny LLaVA: `LlavaForConditionalGeneration
.generate` in float64 under greedy decoding, with inputs from the checkpoint's own processor."""

from __future__ import annotations

import functools
import io


def make_image(seed: int, size: int = 32):
    """A small RGB noise image (distinct per seed), as a PIL image."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def _hf(path: str):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float64).eval()
    return model, AutoProcessor.from_pretrained(path)


def hf_generate(path: str, prompt: str, images: list, max_new_tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids as the processor expands them, greedy output ids) of transformers."""
    import torch

    model, processor = _hf(path)
    inputs = processor(text=prompt, images=images or None, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    prompt_ids = inputs["input_ids"][0].tolist()
    return prompt_ids, out[0, len(prompt_ids):].tolist()
