"""The embedded default model used by `tideflow demo` and `tideflow serve` when no model is named.

A ~4M-parameter Llama trained on the Python standard library's source by
`tools/train_demo_model.py`; it ships inside the package (`tideflow/demo/demo_model/`:
config, bfloat16 safetensors, tokenizer, and a model card, README.md, that says how it was
trained). It writes text that reads like Python code and docstrings, so a newcomer can tell a
working runtime from a broken one. It loads through the same path as any checkpoint.
"""

from __future__ import annotations

import pathlib

DEFAULT_MODEL_DIR = pathlib.Path(__file__).resolve().parent / "demo_model"
DEFAULT_MODEL_NAME = DEFAULT_MODEL_DIR.name  # what the server calls it (its directory's name)
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def default_model_dir() -> pathlib.Path:
    """The shipped default model's directory.

    Raises FileNotFoundError naming the missing file when the install lacks the model
    (e.g. a source tree whose weights were not checked out); `tools/train_demo_model.py`
    writes it again.
    """
    for name in _REQUIRED_FILES:
        if not (DEFAULT_MODEL_DIR / name).is_file():
            raise FileNotFoundError(
                f"the embedded default model has no {name} in {DEFAULT_MODEL_DIR}; reinstall tideflow "
                f"or run `python tools/train_demo_model.py --output-dir {DEFAULT_MODEL_DIR}`"
            )
    return DEFAULT_MODEL_DIR
