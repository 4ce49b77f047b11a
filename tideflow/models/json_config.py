"""A model's config.json read with `json`, for the processes that never load weights.

The text stages (tokenizer, detokenizer, the server's ingress, batch prompt actors) need a few
numbers from the config: the vocabulary size, the context length and, for a multimodal model,
how images sit in a prompt. `JsonConfig` answers `getattr` the way a transformers config does
(nested sections are `JsonConfig`s too, `get_text_config()` finds the text section), so
`model_max_len` and `ImagePromptSpec.from_config` read either one without transformers.
"""

from __future__ import annotations

import json
import os
from typing import Any

CONFIG_FILE = "config.json"

# Where composite configs keep their text model, as transformers' get_text_config looks for it.
_TEXT_SECTIONS = ("text_encoder", "decoder", "generator", "text_config")


class JsonConfig:
    """Attribute access over one config.json dict. A missing key is an AttributeError, so
    `getattr(config, name, default)` works as on a transformers config."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]):
        self._data = data

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(name) from None
        return JsonConfig(value) if isinstance(value, dict) else value

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)

    def get_text_config(self) -> JsonConfig:
        """The text model's section of a composite config (LLaVA's `text_config`), else itself.
        ValueError when several sections could be it, as transformers raises."""
        found = [name for name in _TEXT_SECTIONS if isinstance(self._data.get(name), dict)]
        if len(found) > 1:
            raise ValueError(f"config.json has several text configs: {found}")
        return JsonConfig(self._data[found[0]]) if found else self

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary size, from the top level or the text section (None when neither has it)."""
        value = self._data.get("vocab_size")
        if not isinstance(value, int):
            value = self.get_text_config()._data.get("vocab_size")
        return value if isinstance(value, int) and value > 0 else None

    def __repr__(self) -> str:
        return f"JsonConfig({self._data.get('model_type')!r})"


def read_json_object(path: str, what: str = "the file") -> dict | None:
    """The JSON object in file `path`, or None when there is no such file. ValueError naming
    the path (and `what` it is) when it cannot be read, is not JSON or holds no object."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and bad UTF-8
        raise ValueError(f"{path}: cannot read {what}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {what} must be a JSON object, got {type(data).__name__}")
    return data


def read_json_config(model: str) -> JsonConfig | None:
    """The config.json of a local model directory, or None when `model` is no directory
    holding one (a hub id: the caller falls back to transformers)."""
    data = read_json_object(os.path.join(os.path.expanduser(model), CONFIG_FILE), "the model config")
    return None if data is None else JsonConfig(data)
