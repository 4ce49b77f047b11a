"""A model's generation defaults, as vLLM applies them: what its `generation_config.json` makes
the default of requests that leave sampling fields unset, and the extra end-of-sequence ids it
names.

Which file is read follows vLLM's `--generation-config`: "auto" reads the model's own, "vllm"
takes no sampling defaults from it (tideflow's own apply), and any other value is a directory
whose generation_config.json is read instead. `--override-generation-config` keys are laid over
the sampling defaults in every mode. Of the file only the keys of
`tideflow.sampling_params.GENERATION_CONFIG_FIELDS` (temperature, top_p, top_k, min_p,
repetition_penalty, max_new_tokens -> max_tokens) and `eos_token_id` count.

The file is read as JSON, without transformers or torch, so the server's text-only process
can apply the defaults too.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from tideflow.config import GENERATION_CONFIG_MODES, ModelConfig, generation_config_source
from tideflow.models.json_config import read_json_object
from tideflow.sampling_params import SamplingParams, generation_config_defaults

logger = logging.getLogger(__name__)
FILE_NAME = "generation_config.json"


@dataclass(frozen=True)
class GenerationDefaults:
    """The defaults one model's generation config sets. Built by `load_generation_defaults`."""

    # SamplingParams field -> the model's default (temperature, top_p, top_k, min_p,
    # repetition_penalty, max_tokens), sorted by field; empty: tideflow's own defaults apply
    sampling: tuple[tuple[str, Any], ...] = ()
    eos_token_ids: tuple[int, ...] = ()  # end-of-sequence ids the generation config names
    source: str | None = None  # where `sampling` came from, for the log; None: nowhere

    def __post_init__(self):
        fields = dict(self.sampling)
        try:
            SamplingParams(**fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sampling defaults {fields!r}: {exc}") from None
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.eos_token_ids):
            raise ValueError(f"eos_token_ids must be non-negative token ids, got {self.eos_token_ids!r}")

    @property
    def fields(self) -> dict[str, Any]:
        """`sampling` as a dict (a copy)."""
        return dict(self.sampling)

    def get(self, name: str, fallback: Any) -> Any:
        """The model's default for SamplingParams field `name`, else `fallback`."""
        return self.fields.get(name, fallback)

    def sampling_params(self, base: SamplingParams | None = None) -> SamplingParams:
        """`base` (default: `SamplingParams()`) with the model's defaults in place of its values:
        what a request that sets nothing runs with."""
        base = SamplingParams() if base is None else base
        return base.replace(**self.fields) if self.sampling else base

    def describe(self) -> str:
        """"temperature=0.7, top_k=5" (or "none")."""
        return ", ".join(f"{k}={v!r}" for k, v in self.sampling) or "none"

    def log_applied(self, where: str) -> None:
        """One INFO line saying which defaults requests that leave them unset get in `where`
        (vLLM warns the same way when a model's generation config changes them)."""
        if self.sampling:
            logger.info("%s: sampling fields left unset take the generation-config defaults of %s: %s "
                        "(--generation-config vllm ignores the model's)", where, self.source, self.describe())


def load_generation_defaults(model: str, generation_config: str = "auto",
                             override: tuple[tuple[str, Any], ...] | dict = ()) -> GenerationDefaults:
    """The generation defaults of `model` (a model directory or hub id) under
    `generation_config` ("auto" | "vllm" | a directory) with `override` keys laid over the
    sampling defaults. A model without a generation_config.json has none; a named directory
    without one, a file that is not a JSON object, or a bad value is a ValueError naming the file."""
    generation_config = generation_config_source(generation_config)
    # the eos ids come from the file vLLM reads them from: the model's own unless a directory is named
    path = _model_file(model) if generation_config in GENERATION_CONFIG_MODES else \
        os.path.join(generation_config, FILE_NAME)
    config = {}
    if path is not None:
        config = read_json_object(path, "the generation config")
        if config is None:
            raise ValueError(f"{path}: cannot read the generation config: no such file")
    sampling = {}
    if generation_config != "vllm":
        try:
            sampling = generation_config_defaults(config, path or FILE_NAME)
        except ValueError as exc:
            raise ValueError(f"{exc} (--generation-config vllm ignores the model's sampling defaults)") from None
    source = path if sampling else None
    override = dict(override)
    if override:
        sampling.update(generation_config_defaults(override, "override_generation_config", strict=True))
        source = f"{source} and override_generation_config" if source else "override_generation_config"
    return GenerationDefaults(tuple(sorted(sampling.items())), _eos_ids(config.get("eos_token_id"), path), source)


def generation_defaults(config: ModelConfig) -> GenerationDefaults:
    """The generation defaults of what a `ModelConfig` loads."""
    return load_generation_defaults(config.model, config.generation_config, config.override_generation_config)


def _model_file(model: str) -> str | None:
    """The generation_config.json of a model directory or hub id, or None when it has none."""
    local = os.path.expanduser(model)
    if os.path.isdir(local):
        path = os.path.join(local, FILE_NAME)
        return path if os.path.isfile(path) else None
    if os.path.exists(local) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model):
        return None  # a file (a GGUF checkpoint, converted where it loads) or no hub id
    try:  # a hub id: where the hub cache holds the file (fetched the way the model's config is)
        from transformers.utils import cached_file

        return cached_file(model, FILE_NAME, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except Exception:  # noqa: BLE001  (no hub, no file: the model has no generation config)
        return None


def _eos_ids(value, path: str | None) -> tuple[int, ...]:
    """`eos_token_id` (null, one id or a list of ids) as sorted ids."""
    if value is None:
        return ()
    ids = [value] if not isinstance(value, list) else value
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in ids):
        raise ValueError(f"{path}: eos_token_id must be a token id or a list of them, got {value!r}")
    return tuple(sorted(set(ids)))
