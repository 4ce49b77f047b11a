"""Frozen configuration records.

One root config (`EngineConfig`) made of small frozen sub-configs. What to load
(`ModelConfig`), how the engine runs (`CacheConfig`, `SchedulerConfig`) and where it runs
(`ParallelConfig`) are kept apart. Every field is validated in `__post_init__`; derive a
changed config with `dataclasses.replace`, never mutate one.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tideflow.sampling_params import generation_config_defaults

_DTYPES = ("auto", "float32", "float64", "bfloat16", "float16")
KERNEL_BACKENDS = ("auto", "torch")
# the forward pass: "tideflow" runs tideflow's packed decoder (Llama-pattern architectures),
# "transformers" the model's own modules with the tideflow attention function, "auto" the
# first where the model supports it
MODEL_IMPLS = ("auto", "tideflow", "transformers")
# `generation_config` besides a directory, as vLLM's --generation-config: "auto" takes the
# model's generation_config.json as the request defaults, "vllm" ignores it
GENERATION_CONFIG_MODES = ("auto", "vllm")


def parse_cores(spec: str) -> list[int]:
    """"0-1,3" -> [0, 1, 3]. ValueError for anything else."""
    cores: set[int] = set()
    try:
        for part in spec.split(","):
            lo, dash, hi = part.strip().partition("-")
            if dash and not hi:
                raise ValueError
            first, last = int(lo), int(hi or lo)
            if first < 0 or last < first:
                raise ValueError
            cores.update(range(first, last + 1))
    except ValueError:
        raise ValueError(f"cpu_bind: expected 'auto' or cores like '0-1,3', got {spec!r}") from None
    return sorted(cores)


def check_cpu_bind(spec: str | None) -> str | None:
    """`spec` validated (not applied): None, "auto" or a core list."""
    if spec is not None and spec != "auto":
        parse_cores(spec)
    return spec


@dataclass(frozen=True)
class ModelConfig:
    """What to load."""

    model: str  # local HF model directory, or a hub id where the network allows it
    tokenizer: str | None = None  # defaults to `model`
    dtype: str = "auto"  # one of _DTYPES; "auto" takes the checkpoint's torch_dtype (float32 on CPU for half types)
    max_model_len: int | None = None  # context length; None -> the model config's max_position_embeddings
    seed: int = 0  # seed of the engine's default RNG (requests without their own seed)
    trust_remote_code: bool = False
    model_impl: str = "auto"  # one of MODEL_IMPLS
    # a Jinja chat template (its text) that replaces the tokenizer's; None: the tokenizer's own
    chat_template: str | None = None
    # where requests that leave sampling fields unset take their defaults from (one of
    # GENERATION_CONFIG_MODES, or a directory holding the generation_config.json to take);
    # read by tideflow.models.generation_defaults
    generation_config: str = "auto"
    # generation-config keys (temperature, max_new_tokens ...) laid over it, as sorted
    # (key, value) pairs (a mapping given here is sorted into them)
    override_generation_config: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if not self.model:
            raise ValueError("model must name a model directory or hub id")
        if not isinstance(self.generation_config, str) or not self.generation_config:
            raise ValueError(f"generation_config must be {GENERATION_CONFIG_MODES} or a directory, "
                             f"got {self.generation_config!r}")
        override = self.override_generation_config
        if isinstance(override, Mapping):
            override = tuple(sorted(override.items()))
            object.__setattr__(self, "override_generation_config", override)
        if not isinstance(override, tuple) or not all(isinstance(p, tuple) and len(p) == 2 for p in override):
            raise ValueError(f"override_generation_config must be a mapping, got {override!r}")
        generation_config_defaults(dict(override), "override_generation_config", strict=True)
        if self.model_impl not in MODEL_IMPLS:
            raise ValueError(f"model_impl must be one of {MODEL_IMPLS}, got {self.model_impl!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be positive, got {self.max_model_len}")


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache."""

    block_size: int = 16  # tokens per KV block
    num_blocks: int | None = None  # blocks in the pool; None -> sized from kv_cache_memory_bytes
    kv_cache_memory_bytes: int = 1 << 30  # budget for the pool when num_blocks is None
    enable_prefix_caching: bool = True  # share full blocks between sequences with equal prefixes

    def __post_init__(self):
        if self.block_size < 1:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be positive, got {self.num_blocks}")
        if self.kv_cache_memory_bytes < 1:
            raise ValueError("kv_cache_memory_bytes must be positive")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching."""

    max_num_seqs: int = 64  # sequences running at once
    # token budget of one step (prefill chunks + decodes); None: the whole context,
    # max(2048, max_model_len), which the engine resolves from the checkpoint (chunked prefill off)
    max_num_batched_tokens: int | None = 2048
    enable_chunked_prefill: bool = True  # split long prompts across steps under the budget

    def __post_init__(self):
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be positive, got {self.max_num_seqs}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be positive, got {self.max_num_batched_tokens}")


@dataclass(frozen=True)
class ParallelConfig:
    """Where it runs (one process for the in-process engine)."""

    device: str = "cpu"  # torch device of the model runner
    # ranks that each hold 1/k of the model (attention heads, MLP and expert columns); k > 1
    # starts k - 1 Ray actors beside the engine's own process (tideflow.runtime.parallel.sharded_runner)
    tensor_parallel_size: int = 1
    # cores the engine's compute threads run on: None (no binding), "auto" (the idle ones when
    # it starts) or a list like "0-1" (tideflow.runtime.engine.cpu_binding)
    cpu_bind: str | None = None

    def __post_init__(self):
        if not self.device:
            raise ValueError("device must be set")
        check_cpu_bind(self.cpu_bind)
        tp = self.tensor_parallel_size
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            raise ValueError(f"tensor_parallel_size must be a positive integer, got {tp!r}")


@dataclass(frozen=True)
class EngineConfig:
    """The root config of one engine."""

    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # hot-path kernels (attention, cache writes, sampling, MoE routing): "auto" runs tideflow's
    # kernels for the device (numba on CPU, numba.cuda on CUDA); "torch" runs their
    # torch references everywhere
    kernel_backend: str = "auto"

    def __post_init__(self):
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"kernel_backend must be one of {KERNEL_BACKENDS}, got {self.kernel_backend!r}")
        budget = self.scheduler.max_num_batched_tokens
        if not self.scheduler.enable_chunked_prefill and self.model.max_model_len is not None and budget is not None:
            if self.scheduler.max_num_batched_tokens < self.model.max_model_len:
                raise ValueError(
                    "max_num_batched_tokens must be >= max_model_len when chunked prefill is off "
                    f"({self.scheduler.max_num_batched_tokens} < {self.model.max_model_len})"
                )

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)


def engine_config(
    model: str,
    *,
    tokenizer: str | None = None,
    dtype: str = "auto",
    seed: int = 0,
    max_model_len: int | None = None,
    block_size: int = 16,
    num_kv_blocks: int | None = None,
    kv_cache_memory_bytes: int = 1 << 30,
    enable_prefix_caching: bool = True,
    enable_chunked_prefill: bool = True,
    max_num_seqs: int = 64,
    max_num_batched_tokens: int | None = None,
    kernel_backend: str = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    model_impl: str = "auto",
    tensor_parallel_size: int = 1,
    chat_template: str | None = None,
    generation_config: str = "auto",
    override_generation_config: dict | str | None = None,
    cpu_bind: str | None = None,
) -> EngineConfig:
    """The root config from the flat keyword options users pass to `LLM(...)` and to graphs.
    Unknown options raise TypeError naming them. `chat_template` is a template's text or a
    file that holds it (read here, so the config carries the text to every stage).
    `generation_config` ("auto" | "vllm" | a directory) and `override_generation_config` (a
    mapping, or its JSON text) say which defaults requests that leave sampling fields unset
    get, as vLLM's --generation-config and --override-generation-config do."""
    if max_num_batched_tokens is None:
        # without chunking a whole prompt must fit one step
        max_num_batched_tokens = 2048 if enable_chunked_prefill else (max(2048, max_model_len) if max_model_len else None)
    return EngineConfig(
        model=ModelConfig(model, tokenizer, dtype, max_model_len, seed, trust_remote_code, model_impl,
                          chat_template_text(chat_template), generation_config_source(generation_config),
                          override_generation_config_pairs(override_generation_config)),
        cache=CacheConfig(block_size, num_kv_blocks, kv_cache_memory_bytes, enable_prefix_caching),
        scheduler=SchedulerConfig(max_num_seqs, max_num_batched_tokens, enable_chunked_prefill),
        parallel=ParallelConfig(device, tensor_parallel_size, cpu_bind),
        kernel_backend=kernel_backend,
    )


def chat_template_text(value: str | None) -> str | None:
    """A chat template given as its text or as the path of a file holding it (as vLLM's
    `--chat-template` takes it): the text."""
    if value is None or not isinstance(value, str):
        return value
    if "{" not in value and os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if "{" not in value:
        raise ValueError(f"chat_template: {value!r} is neither a Jinja template nor a file")
    return value


def generation_config_source(value: str) -> str:
    """`generation_config` as vLLM's `--generation-config` takes it: "auto", "vllm", or a
    directory holding a generation_config.json (returned absolute). ValueError otherwise, so a
    wrong directory fails before anything loads."""
    if isinstance(value, str) and value in GENERATION_CONFIG_MODES:
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f"generation_config must be one of {GENERATION_CONFIG_MODES} or a directory, got {value!r}")
    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.isfile(os.path.join(path, "generation_config.json")):
        what = "no directory" if not os.path.isdir(path) else "a directory without generation_config.json"
        raise ValueError(f"generation_config: {value!r} is {what}; expected one of {GENERATION_CONFIG_MODES} or "
                         "a directory holding generation_config.json")
    return path


def override_generation_config_pairs(value: Mapping | str | None) -> tuple[tuple[str, Any], ...]:
    """`override_generation_config` (a mapping, or its JSON text as the command line gives it)
    as ModelConfig keeps it: sorted (key, value) pairs."""
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"override_generation_config: not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"override_generation_config must be a mapping such as {{\"temperature\": 0.5}}, got {value!r}")
    return tuple(sorted(value.items()))


ENGINE_OPTIONS = tuple(inspect.signature(engine_config).parameters)  # model, tokenizer, dtype ...: its keyword names



EXPERT_PLACEMENTS = ("even", "balanced")
DEFAULT_EXPERT_CPUS = 0.25  # Ray CPUs one expert actor asks for unless `expert_cpus` says otherwise


@dataclass(frozen=True)
class ExpertParallelConfig:
    """Where a MoE model's experts run: on `actors` Ray actors beside the engine, which keeps
    attention and routing (tideflow.runtime.parallel.expert_parallel). Built from the flat `expert_*`
    options of an engine-owning stage by `expert_parallel_config`."""

    actors: int  # expert actors K, in [1, routed experts per layer] (checked against the model when it loads)
    placement: str = "even"  # one of EXPERT_PLACEMENTS (tideflow.runtime.parallel.expert_placement)
    # per-expert token counts that "balanced" places by: [moe layer][expert] (or one [expert]
    # list for every layer), e.g. a previous run's `expert_tokens` stat; None: a warm-up run
    load: tuple | None = None
    warmup_tokens: int = 512  # prompt tokens of the warm-up run ("balanced" without `load`)
    # Ray CPUs each expert actor asks for. A quarter by default: an expert actor mostly waits for
    # its layer's rows (the engine computes attention and routing in between), so a whole CPU
    # each would leave a small machine unable to place a few of them (issue 21)
    num_cpus: float = DEFAULT_EXPERT_CPUS
    num_threads: int = 1  # torch threads of each expert actor

    def __post_init__(self):
        a = self.actors
        if isinstance(a, bool) or not isinstance(a, int) or a < 1:
            raise ValueError(f"expert_actors must be an integer >= 1, got {a!r}")
        if self.placement not in EXPERT_PLACEMENTS:
            raise ValueError(f"expert_placement must be one of {EXPERT_PLACEMENTS}, got {self.placement!r}")
        if self.warmup_tokens < 1:
            raise ValueError(f"expert_warmup_tokens must be positive, got {self.warmup_tokens!r}")
        if self.num_cpus < 0:
            raise ValueError(f"expert_cpus must be >= 0, got {self.num_cpus!r}")
        if self.num_threads < 1:
            raise ValueError(f"expert_threads must be positive, got {self.num_threads!r}")


# engine-stage option -> ExpertParallelConfig field
EXPERT_OPTIONS = {
    "expert_actors": "actors",
    "expert_placement": "placement",
    "expert_load": "load",
    "expert_warmup_tokens": "warmup_tokens",
    "expert_cpus": "num_cpus",
    "expert_threads": "num_threads",
}


def expert_parallel_config(options: dict) -> tuple[ExpertParallelConfig | None, dict]:
    """Split a stage's flat options into the expert-parallel config (None when `expert_actors`
    is absent) and the rest. `expert_*` options without `expert_actors` raise ValueError."""
    given = {EXPERT_OPTIONS[k]: v for k, v in options.items() if k in EXPERT_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in EXPERT_OPTIONS}
    if not given:
        return None, rest
    if "actors" not in given:
        raise ValueError(f"expert options {sorted(k for k in options if k in EXPERT_OPTIONS)} need expert_actors")
    if given.get("load") is not None:
        load = given["load"]
        given["load"] = tuple(tuple(r) if hasattr(r, "__len__") else r for r in load)
    return ExpertParallelConfig(**given), rest
