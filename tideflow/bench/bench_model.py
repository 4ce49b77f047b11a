"""The benchmark model: a ~24M-parameter Llama with random weights, written once per config."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# A ~24M-parameter Llama (8 x 2.9M per layer + 0.5M embeddings), vocab of the tiny tokenizer.
BENCH_MODEL_NAME = "llama-24m"
BENCH_MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}


def bench_model(path: str | os.PathLike) -> Path:
    """Write the benchmark model (random weights, float32) into `path` unless it is already there."""
    from tideflow.testing.tiny_models import write_tiny_model

    path = Path(path)
    if _is_bench_model(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # written whole, then renamed
        write_tiny_model("llama", Path(tmp) / "model", seed=0, **BENCH_MODEL_CONFIG)
        if path.exists() and not _is_bench_model(path):  # a stale copy from another config
            shutil.rmtree(path)
        try:
            (Path(tmp) / "model").rename(path)
        except OSError:  # another process wrote it meanwhile
            if not _is_bench_model(path):
                raise
    return path


def _is_bench_model(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    fields_match = all(config.get(k) == v for k, v in BENCH_MODEL_CONFIG.items())
    return fields_match and (path / "model.safetensors").is_file()


def default_model_dir() -> Path:
    return Path(tempfile.gettempdir()) / "tideflow-bench" / BENCH_MODEL_NAME


def model_info(model_dir: str) -> dict:
    """Parameter count and architecture fields of the model in `model_dir`."""
    import math

    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    params = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(f, "np") as st:
            params += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
    fields = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads")
    return {"dir": str(model_dir), "params": params, **{k: getattr(config, k, None) for k in fields}}
