"""`ServeConfig`: what one OpenAI-compatible server loads, how its engines run and where.

It is the `args` of `tideflow.serve:build_app` (a Serve config file's `args:` block, or
`serve run tideflow.serve:build_app key=value ...`, whose values arrive as strings), parsed
by `ServeConfig.from_args`. Every field is checked in `__post_init__`; unknown keys raise.
`rate_limits` and `breaker` are small configs of their own (`tideflow.serve.rate_limits`,
`tideflow.serve.breaker`), given as mappings in a Serve config file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tideflow.serve.breaker import BreakerConfig
from tideflow.serve.rate_limits import RateLimitConfig

# the integer fields and their least values
_LOWER_BOUNDS = {"num_replicas": 1, "max_ongoing_requests": 1, "max_queued_requests": 0, "retry_after_s": 0}
_POSITIVE_SECONDS = ("health_check_period_s", "health_check_timeout_s")  # float fields, > 0


def builtin_graph_names() -> tuple[str, ...]:
    """The names `graph` may take besides a YAML path: `tideflow.graphs.BUILTIN_GRAPHS`'s."""
    from tideflow.graphs.builtin import BUILTIN_GRAPHS

    return tuple(BUILTIN_GRAPHS)


def _engine_option_names() -> frozenset[str]:
    from tideflow.config import ENGINE_OPTIONS

    return frozenset(ENGINE_OPTIONS) - {"model"}


@dataclass(frozen=True)
class ServeConfig:
    # -- what to load --
    model: str | None = None  # model directory; None -> the embedded default model (a YAML graph: its own)
    served_model_name: str | None = None  # the `model` clients send; None -> the model directory's basename
    # -- how the engines run --
    engine_options: Mapping[str, Any] = field(default_factory=dict)  # LLM(...) keywords: dtype, max_model_len ...
    # -- where it runs --
    graph: str = "colocated"  # a built-in graph's name (colocated, disaggregated, moe, multimodal) | a graph YAML path
    graph_options: Mapping[str, Any] = field(default_factory=dict)  # built-in graph keywords: replicas, prefill ...
    num_replicas: int = 1  # Serve replicas; each one deploys and owns its own graph
    # -- load, per Serve replica --
    max_ongoing_requests: int = 64  # generation requests inside the graph at once
    max_queued_requests: int = 64  # admitted requests waiting for one of those slots; past both: 429
    retry_after_s: int = 1  # the Retry-After header of a 429
    # -- health: Serve calls the replica's check every period; after 3 failures in a row (a dead
    # stage) it replaces the replica, and with it the graph --
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    # -- how replies are read --
    # the parser that finds tool calls in a reply for tool_choice "auto" (a name in
    # tideflow.serve.tool_parsers.TOOL_PARSERS: hermes, llama3_json); None: "auto" is a 400
    tool_call_parser: str | None = None
    # -- faults: how often one request may move to a live replica when the one holding it dies
    # (request migration: decode or engine replicas, 2+ of them); past it the request fails.
    # None: each stage's own `migration_limit` (else 3); 0: off --
    migration_limit: int | None = None
    # -- who may call, and how much: `Authorization: Bearer <key>` on /v1 routes (tideflow.serve.auth).
    # api_keys are kept out of repr, so a logged config never shows them; resolved() adds those of
    # api_key_file, else TIDEFLOW_API_KEY's; () after it: no authentication --
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_file: str | None = None  # one key per line (# comments); read by resolved()
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)  # per key: rpm, tpm, concurrency
    breaker: BreakerConfig = field(default_factory=BreakerConfig)  # sheds load while the graph is slow or failing

    def __post_init__(self):
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ValueError(f"model must be a model directory, got {self.model!r}")
        name = self.served_model_name
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"served_model_name must be a non-empty string, got {self.served_model_name!r}")
        graph = self.graph
        if not isinstance(graph, str) or not (self.graph_is_builtin or graph.endswith((".yaml", ".yml"))):
            raise ValueError(f"graph must be one of {builtin_graph_names()} or a .yaml file, got {self.graph!r}")
        for name in ("engine_options", "graph_options"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise ValueError(f"{name} must be a mapping of option name -> value, got {value!r}")
            object.__setattr__(self, name, dict(value))
        unknown = set(self.engine_options) - _engine_option_names()
        if unknown:
            known = sorted(_engine_option_names())
            raise ValueError(f"engine_options: unknown option(s) {sorted(unknown)}; known: {known}")
        if not self.graph_is_builtin and (self.engine_options or self.graph_options):
            raise ValueError("engine_options and graph_options apply to the built-in graphs; a YAML graph sets its own")
        for field_name, low in _LOWER_BOUNDS.items():
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{field_name} must be an integer >= {low}, got {value!r}")
        for field_name in _POSITIVE_SECONDS:
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"{field_name} must be a positive number of seconds, got {value!r}")
        if self.tool_call_parser is not None:
            from tideflow.serve.tool_parsers import TOOL_PARSERS

            if self.tool_call_parser not in TOOL_PARSERS:
                raise ValueError(f"tool_call_parser must be one of {sorted(TOOL_PARSERS)}, got {self.tool_call_parser!r}")
        limit = self.migration_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"migration_limit must be an integer >= 0, got {limit!r}")
        self._check_keys()
        object.__setattr__(self, "rate_limits", RateLimitConfig.from_value(self.rate_limits))
        object.__setattr__(self, "breaker", BreakerConfig.from_value(self.breaker))

    def _check_keys(self) -> None:
        from tideflow.serve.auth import check_key

        keys = self.api_keys
        if isinstance(keys, str):  # `serve run ... api_keys=KEY`: one key
            keys = (keys,)
        if not isinstance(keys, (list, tuple)):
            raise ValueError(f"api_keys must be a list of keys, got a {type(keys).__name__}")
        for i, key in enumerate(keys):
            check_key(key, f"api_keys[{i}]")
        object.__setattr__(self, "api_keys", tuple(keys))
        if self.api_key_file is not None and (not isinstance(self.api_key_file, str) or not self.api_key_file):
            raise ValueError(f"api_key_file must be a file path, got {self.api_key_file!r}")

    @property
    def graph_is_builtin(self) -> bool:
        """Whether `graph` names a built-in graph (else it is a YAML path)."""
        return isinstance(self.graph, str) and self.graph in builtin_graph_names()

    @classmethod
    def from_args(cls, args: Mapping[str, Any] | None) -> ServeConfig:
        """From `build_app`'s args dict. Numeric fields also accept strings of numbers."""
        args = dict(args or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(args) - names
        if unknown:
            raise ValueError(f"unknown serve argument(s) {sorted(unknown)}; known: {sorted(names)}")
        for name in (*_LOWER_BOUNDS, "migration_limit"):
            if isinstance(args.get(name), str) and args[name].strip().isdigit():
                args[name] = int(args[name])
        for name in _POSITIVE_SECONDS:
            if isinstance(args.get(name), str):
                try:
                    args[name] = float(args[name])
                except ValueError:
                    pass  # __post_init__ names the field
        return cls(**args)

    def resolved(self) -> ServeConfig:
        """The config with `served_model_name` filled in, and `model` for the built-in graphs
        (the default model, SmolLM2-135M-Instruct or the embedded fallback, when none is named;
        a GGUF file's name loses its `.gguf`). A YAML graph
        keeps its own models unless `model` overrides them."""
        model = self.model
        if model is None and self.graph_is_builtin:
            from tideflow.demo.default_model import default_model

            model = default_model()
        named = model or yaml_graph_model(self.graph)
        if named is None:
            raise ValueError(f"graph {self.graph!r} names no model and none was given")
        if model is not None and not _model_exists(model):
            raise ValueError(f"model {model!r} is neither a model directory (with config.json), a .gguf file, "
                             "nor an org/name hub id")
        _check_generation_options(self.engine_options)
        name = self.served_model_name or os.path.basename(os.path.normpath(named)).removesuffix(".gguf")
        return dataclasses.replace(self, model=model, served_model_name=name, **self._resolved_keys())

    def _resolved_keys(self) -> dict[str, Any]:
        """api_keys with api_key_file's keys (read here, in the process that starts the app, so
        replicas need not see the file), else TIDEFLOW_API_KEY's; api_key_file then done."""
        from tideflow.serve.auth import resolve_keys

        return {"api_keys": resolve_keys(self.api_keys, self.api_key_file), "api_key_file": None}


def _check_generation_options(options: Mapping[str, Any]) -> None:
    """The generation-config options name a directory and sampling keys: ValueError, before
    anything starts, when the directory has no generation_config.json or a key is wrong."""
    from tideflow.config import generation_config_source, override_generation_config_pairs
    from tideflow.sampling_params import generation_config_defaults

    generation_config_source(options.get("generation_config", "auto"))
    pairs = override_generation_config_pairs(options.get("override_generation_config"))
    generation_config_defaults(dict(pairs), "override_generation_config", strict=True)


def _model_exists(model: str) -> bool:
    if model.endswith(".gguf"):  # a GGUF checkpoint (tideflow.models.gguf checks it on loading)
        return os.path.isfile(os.path.expanduser(model))
    if os.path.isdir(os.path.expanduser(model)):
        return os.path.isfile(os.path.join(os.path.expanduser(model), "config.json"))
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model) is not None


def yaml_graph_model(path: str) -> str | None:
    """The `model` option of the first stage of a graph YAML file that has one."""
    from tideflow.graphs import Graph

    for spec in Graph.from_yaml(path).stages:
        if spec.options_dict.get("model"):
            return str(spec.options_dict["model"])
    return None
