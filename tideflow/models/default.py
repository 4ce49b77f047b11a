"""The embedded default model used by `tideflow demo` when no model is named.

A small Llama-style model with random weights, written on first use into the cache
directory (see `tideflow.envs.cache_dir`) through the same checkpoint format a real model
has, so the demo exercises the real loading path.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

DEFAULT_MODEL_NAME = "tideflow-default-llama-v1"
DEFAULT_CONFIG = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=2048,
)


def default_model_dir() -> pathlib.Path:
    """The default model's directory, written once (atomically) if missing."""
    from tideflow.envs import cache_dir
    from tideflow.models.testing import write_tiny_model

    target = cache_dir() / DEFAULT_MODEL_NAME
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".default-", dir=target.parent))
    try:
        write_tiny_model("llama", tmp, seed=0, **DEFAULT_CONFIG)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
