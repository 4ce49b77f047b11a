"""`StageConfig`: a stage's options, parsed once (by `compile_graph`) into typed parts.

A graph stores each stage's options as the flat mapping users write (`{model: ..., dtype:
float32, max_num_seqs: 32, expert_actors: 2, num_threads: 4}`); `parse_stage_config` splits
it into the questions they answer:

- what to load and how the engine runs: `EngineConfig` (`tideflow.config.engine_config`'s
  options; the stage's `shards` set its tensor_parallel_size);
- where a MoE engine's experts run: `ExpertParallelConfig` (the `expert_*` options);
- the stage's own knobs: `StageOptions`;
- options none of those know, for custom roles: `StageConfig.extra`.

A bad option (unknown to a built-in role, of the wrong type, or out of range) raises
ValueError naming the stage and the option, before anything starts. A `StageConfig` is
frozen plain data: it travels to a stage actor by pickling.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tideflow.config import (
    ENGINE_OPTIONS,
    EXPERT_OPTIONS,
    EngineConfig,
    ExpertParallelConfig,
    ModelConfig,
    engine_config,
    expert_parallel_config,
)

DEFAULT_BLOCK_SIZE = 16  # KV block size the prefix router hashes by when a stage has no engine options
DEFAULT_ENCODER_CACHE_SIZE = 1024  # images whose features one encoder replica keeps
DEFAULT_MIGRATION_LIMIT = 3  # times one request may move to a live replica when the one holding it dies


@dataclass(frozen=True)
class StageOptions:
    """The stage's own knobs: neither what it loads nor how its engine runs."""

    num_threads: int | None = None  # torch threads of the replica's process; None: torch's default
    # requests an engine-owning role holds (queued or running) before its input waits in the
    # inbox; None: twice the engine's max_num_seqs
    max_pending: int | None = None
    checkpoint_kv: bool = False  # decode: a snapshot carries each live sequence's K/V (else tokens only)
    encoder_cache_size: int = DEFAULT_ENCODER_CACHE_SIZE  # encoder: images whose features a replica caches
    # a migratable stage (decode, engine) with 2+ replicas: how often one request may move to a
    # live replica when the one holding it dies (docs/reliability.md fault 10); past it the
    # request fails with an explicit error. 0: no migration (the dead replica's requests wait
    # for its restart, restore and replay). None: deploy's `migration_limit`, else 3
    migration_limit: int | None = None

    def __post_init__(self):
        for name in ("num_threads", "max_pending"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.migration_limit is not None and self.migration_limit < 0:
            raise ValueError(f"migration_limit must be an integer >= 0, got {self.migration_limit!r}")
        if self.encoder_cache_size < 0:
            raise ValueError(f"encoder_cache_size must be an integer >= 0, got {self.encoder_cache_size!r}")


@dataclass(frozen=True)
class StageConfig:
    """A stage's parsed options. Built by `parse_stage_config`; never mutated."""

    engine: EngineConfig | None = None  # what to load and how the engine runs; None: no `model` option
    experts: ExpertParallelConfig | None = None  # where the MoE experts run; None: inside the engine
    stage: StageOptions = field(default_factory=StageOptions)  # the stage's own knobs
    extra: tuple[tuple[str, Any], ...] = ()  # option -> value, sorted by name: what only a custom role reads

    @property
    def model(self) -> ModelConfig:
        """What to load. ValueError when the stage names no model."""
        if self.engine is None:
            raise ValueError("the stage has no 'model' option")
        return self.engine.model

    @property
    def extras(self) -> dict[str, Any]:
        """`extra` as a dict (a copy)."""
        return dict(self.extra)

    @property
    def max_pending(self) -> int:
        """Requests an engine-owning role holds before it stops taking input."""
        if self.stage.max_pending is not None:
            return self.stage.max_pending
        config = self.engine  # an EngineConfig (its `scheduler` is a SchedulerConfig, not an engine's part)
        return 2 * (config.scheduler.max_num_seqs if config is not None else 64)

    @property
    def kv_block_size(self) -> int:
        """The engine's KV block size (what the prefix router hashes by)."""
        return self.engine.cache.block_size if self.engine is not None else DEFAULT_BLOCK_SIZE

    def describe(self) -> str:
        """The parsed values that differ from their defaults, as `part.field=value` pairs."""
        pairs: list[str] = []
        if self.engine is not None:
            pairs.append(f"model={self.engine.model.model}")
            base = dataclasses.asdict(engine_config(self.engine.model.model))
            pairs += _changed("", dataclasses.asdict(self.engine), base)
        if self.experts is not None:
            pairs += _changed("experts.", dataclasses.asdict(self.experts), {})
        pairs += _changed("stage.", dataclasses.asdict(self.stage), dataclasses.asdict(StageOptions()))
        pairs += [f"{k}={v!r}" for k, v in self.extra]
        return ", ".join(pairs) or "-"


def _changed(prefix: str, values: dict, base: dict) -> list[str]:
    out = []
    for key, value in values.items():
        if isinstance(value, dict):
            out += _changed(f"{prefix}{key}.", value, base.get(key, {}))
        elif key not in base or base[key] != value:
            out.append(f"{prefix}{key}={value}")
    return out


# option -> the types it takes (from the signatures of what parses it)
_ENGINE_TYPES = typing.get_type_hints(engine_config)
_ENGINE_TYPES.pop("return")
_EXPERT_HINTS = typing.get_type_hints(ExpertParallelConfig)
_EXPERT_TYPES = {option: _EXPERT_HINTS[name] for option, name in EXPERT_OPTIONS.items()}
_STAGE_TYPES = typing.get_type_hints(StageOptions)
# a GGUF checkpoint: `model` names the file, or a directory with `gguf_file` in it (converted once, at
# compile, into a cached plain directory that the stages load: tideflow.models.gguf)
_MODEL_TYPES = {"gguf_file": str | None}
KNOWN_OPTIONS = frozenset(ENGINE_OPTIONS) | frozenset(EXPERT_OPTIONS) | frozenset(_STAGE_TYPES) | frozenset(_MODEL_TYPES)


def parse_stage_config(stage: str, options: Mapping[str, Any], *, shards: int = 1, extras: bool = True) -> StageConfig:
    """Parse one stage's flat options. `shards` > 1 sets the engine's tensor_parallel_size;
    `extras` False (the built-in roles) makes an option no part knows an error. Raises
    ValueError naming the stage and the option."""
    where = f"stage {stage!r}"
    unknown = sorted(k for k in options if k not in KNOWN_OPTIONS)
    if unknown and not extras:
        raise ValueError(f"{where}: unknown option {_names(unknown)} (known: {', '.join(sorted(KNOWN_OPTIONS))})")
    for key, value in options.items():
        hint = _ENGINE_TYPES.get(key) or _EXPERT_TYPES.get(key) or _STAGE_TYPES.get(key) or _MODEL_TYPES.get(key)
        if hint is not None and not _fits(value, hint):
            raise ValueError(f"{where}: option {key!r} must be {_type_name(hint)}, got {value!r}")
    known = {k: v for k, v in options.items() if k in KNOWN_OPTIONS}
    stage_knobs = {k: known.pop(k) for k in list(known) if k in _STAGE_TYPES}
    try:
        experts, engine_options = expert_parallel_config(known)
        engine = _engine(engine_options, shards)
        knobs = StageOptions(**stage_knobs)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    if experts is not None and engine is None:
        raise ValueError(f"{where}: option 'expert_actors' needs a 'model' option")
    return StageConfig(engine, experts, knobs, tuple(sorted((k, options[k]) for k in unknown)))


def _engine(options: dict[str, Any], shards: int) -> EngineConfig | None:
    gguf_file = options.pop("gguf_file", None)
    if "model" not in options:
        if options or gguf_file is not None:
            raise ValueError(f"option {_names(sorted(options))} needs a 'model' option")
        return None
    if shards > 1:
        given = options.get("tensor_parallel_size", shards)
        if given != shards:
            raise ValueError(f"option 'tensor_parallel_size' ({given}) differs from the stage's shards ({shards})")
        options = {**options, "tensor_parallel_size": shards}
    from tideflow.models.gguf import resolve_model

    return engine_config(**{**options, "model": resolve_model(options["model"], gguf_file)})


def _names(keys: list[str]) -> str:
    return ", ".join(repr(k) for k in keys)


def _members(hint) -> tuple:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def _fits(value: Any, hint) -> bool:
    for kind in _members(hint):
        if kind is type(None) and value is None:
            return True
        if kind is bool and isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind is str and isinstance(value, str):
            return True
        if kind is tuple and isinstance(value, (list, tuple)):
            return True
        if kind is dict and isinstance(value, Mapping):
            return True
    return False


def _type_name(hint) -> str:
    names = {type(None): "None", bool: "a bool", int: "an integer", float: "a number", str: "a string",
             tuple: "a list", dict: "a mapping"}
    return " or ".join(names.get(kind, getattr(kind, "__name__", str(kind))) for kind in _members(hint))
