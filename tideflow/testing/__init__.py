"""Test fixtures: tiny random Hugging Face checkpoints written locally, nothing downloaded.

`write_tiny_model(kind, path, seed=0, **config_overrides)` writes a complete model directory;
`KINDS` lists the causal LMs (llama, qwen2, mixtral, qwen2_moe, mistral, qwen3, gemma, phi3)
and `MULTIMODAL_KINDS` the image-text-to-text ones (llava, written by `tiny_llava`).
Importing this package loads neither torch nor transformers.
"""

from __future__ import annotations

from tideflow.testing.tiny_models import KINDS, MULTIMODAL_KINDS, tiny_config, write_tiny_model

__all__ = ["KINDS", "MULTIMODAL_KINDS", "tiny_config", "write_tiny_model"]
