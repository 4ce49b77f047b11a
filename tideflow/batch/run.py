"""`run`: generation over a Ray Dataset with `map_batches` on an autoscaling actor pool."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tideflow.batch.generator import BatchGenerator, GeneratorSpec
from tideflow.sampling_params import SamplingParams

if TYPE_CHECKING:
    import ray.data

DEFAULT_BATCH_SIZE = 64  # rows per map_batches call: the engine batches them continuously
# calls in flight per actor, sharing its engine. With 2, each batch's slowest rows left the
# engine part-empty until Ray Data sent the next (`tideflow bench batch`, 1000 rows, demo model:
# batch wall 84.5 s at 2, 68.3 / 65.5 s at 4, 65.7 s at 8).
DEFAULT_BATCHES_PER_ACTOR = 4


def run(
    dataset: "ray.data.Dataset",
    model_or_graph,
    *,
    prompt_column: str | None = None,
    messages_column: str | None = None,
    sampling_params: SamplingParams | None = None,
    max_tokens_column: str | None = None,
    structured_outputs_column: str | None = None,
    concurrency: int | tuple[int, int] = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    batches_per_actor: int = DEFAULT_BATCHES_PER_ACTOR,
    engine_options: dict | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
) -> "ray.data.Dataset":
    """The dataset with generated columns added (lazy: Ray Data runs it when it is consumed).

    `model_or_graph` is a model directory (each actor of the pool owns an in-process `LLM`
    built with `engine_options`) or a deployed graph (`Graph.deploy()`'s handle; the actors
    send their rows through it, and the caller shuts it down after consuming the dataset).
    Prompts come from `prompt_column` (text, or token ids as `list<int>`) or
    `messages_column` (chat conversations); with neither, from a column named "prompt".
    `max_tokens_column` (optional) gives rows their own max_tokens, `structured_outputs_column`
    their own output constraint (JSON text such as '{"json": {schema}}', or a struct; null rows
    take `sampling_params.structured_outputs`). Without `sampling_params`,
    rows sample with the model's generation-config defaults (`default_sampling_params`), as
    `LLM.generate` does without them.
    `concurrency` is a fixed pool size or `(min, max)` for Ray Data to autoscale between;
    `batches_per_actor` batches run at once in each actor, sharing its engine (so its
    continuous batching does not drain at the end of every batch).
    Output columns: see `tideflow.batch.generator.OUTPUT_FIELDS`. Raises ValueError naming
    the argument for bad arguments."""
    spec = generator_spec(model_or_graph, prompt_column=prompt_column, messages_column=messages_column,
                          sampling_params=sampling_params, max_tokens_column=max_tokens_column,
                          structured_outputs_column=structured_outputs_column, engine_options=engine_options)
    return map_generator(dataset, spec, concurrency=concurrency, batch_size=batch_size,
                         batches_per_actor=batches_per_actor, num_cpus=num_cpus, num_gpus=num_gpus)


def map_generator(dataset: "ray.data.Dataset", spec: GeneratorSpec, *, concurrency=1, batch_size=DEFAULT_BATCH_SIZE,
                  batches_per_actor: int = DEFAULT_BATCHES_PER_ACTOR, num_cpus: float = 1.0,
                  num_gpus: float = 0.0) -> "ray.data.Dataset":
    """`dataset.map_batches` over pyarrow batches on a pool of `BatchGenerator` actors."""
    import ray.data

    pool = check_pool_args(concurrency, batch_size, batches_per_actor, num_cpus, num_gpus)
    sizes = {"size": pool} if isinstance(pool, int) else {"min_size": pool[0], "max_size": pool[1]}
    threads = {"max_concurrent_calls_per_actor": batches_per_actor, "max_tasks_in_flight_per_actor": batches_per_actor,
               "enable_true_multi_threading": batches_per_actor > 1}
    # Blocks of one batch each (a streaming repartition, no shuffle): Ray Data gives an actor
    # one task per block and runs a task's batches one after another, so a large block would
    # keep the other `batches_per_actor` slots, and the other actors, idle.
    return dataset.repartition(target_num_rows_per_block=batch_size).map_batches(
        BatchGenerator,
        fn_constructor_args=(spec,),
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(**sizes, **threads),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        zero_copy_batch=True,
    )


def generator_spec(model_or_graph, *, prompt_column=None, messages_column=None, sampling_params=None,
                   max_tokens_column=None, structured_outputs_column=None, engine_options=None) -> GeneratorSpec:
    """Checks the arguments `run` shares with `run_job` and bundles them for the actors."""
    if prompt_column is not None and messages_column is not None:
        raise ValueError("prompt_column and messages_column: give one of them, not both")
    for name, value in (("prompt_column", prompt_column), ("messages_column", messages_column),
                        ("max_tokens_column", max_tokens_column), ("structured_outputs_column", structured_outputs_column)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{name} must be a non-empty column name, got {value!r}")
    if prompt_column is None and messages_column is None:
        prompt_column = "prompt"
    if sampling_params is not None and not isinstance(sampling_params, SamplingParams):
        raise ValueError(f"sampling_params must be a SamplingParams, got {type(sampling_params).__name__}")
    if sampling_params is not None and sampling_params.n != 1:
        raise ValueError(f"sampling_params.n must be 1 in a batch job (one completion per row), got {sampling_params.n}")
    options = dict(engine_options or {})
    handle = None
    if hasattr(model_or_graph, "generate") and hasattr(model_or_graph, "graph"):  # a deployed GraphHandle
        loaded = _graph_model_config(model_or_graph.graph)
        handle, model = model_or_graph, loaded.model
        options = {k: v for k, v in (("tokenizer", loaded.tokenizer), ("max_model_len", loaded.max_model_len)) if v is not None}
    elif hasattr(model_or_graph, "compile"):
        raise ValueError("model_or_graph: deploy the graph first (handle = graph.deploy()) and pass the handle")
    elif isinstance(model_or_graph, (str, os.PathLike)):
        model = os.fspath(model_or_graph)
    else:
        raise ValueError(f"model_or_graph: expected a model directory or a deployed graph, got {type(model_or_graph).__name__}")
    # none given: the model's generation-config defaults, as LLM.generate without sampling_params
    params = default_sampling_params(model_or_graph, engine_options) if sampling_params is None else sampling_params
    if params.structured_outputs is not None:  # every row would fail on it: refuse it before anything starts
        from tideflow.runtime.engine.structured.grammar import compile_grammar

        try:
            compile_grammar(params.structured_outputs)
        except ValueError as exc:
            raise ValueError(f"sampling_params: {exc}") from None
    return GeneratorSpec(model, params, prompt_column, messages_column, options, handle,
                         max_tokens_column=max_tokens_column, structured_outputs_column=structured_outputs_column)


def default_sampling_params(model_or_graph, engine_options: dict | None = None,
                            base: SamplingParams | None = None) -> SamplingParams:
    """`base` (default: `SamplingParams()`) with the model's generation-config defaults in place
    of its values (those `engine_options`' generation_config and override_generation_config
    select; a deployed graph's own), as `LLM.get_default_sampling_params` gives them. Logs
    which, once. ValueError names a bad generation config."""
    from tideflow.config import override_generation_config_pairs
    from tideflow.models.generation_defaults import generation_defaults, load_generation_defaults

    if hasattr(model_or_graph, "graph"):  # a deployed GraphHandle
        defaults = generation_defaults(_graph_model_config(model_or_graph.graph))
    else:
        options = engine_options or {}
        defaults = load_generation_defaults(
            os.fspath(model_or_graph), options.get("generation_config", "auto"),
            override_generation_config_pairs(options.get("override_generation_config")),
        )
    defaults.log_applied("batch")
    return defaults.sampling_params(base)


def check_pool_args(concurrency, batch_size, batches_per_actor, num_cpus, num_gpus) -> int | tuple[int, int]:
    """The pool size (an int, or (min, max) to autoscale); ValueError naming a bad argument."""
    pool = _pool_size(concurrency)
    for name, value in (("batch_size", batch_size), ("batches_per_actor", batches_per_actor)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_cpus < 0 or num_gpus < 0:
        raise ValueError(f"num_cpus and num_gpus must be non-negative, got {num_cpus} and {num_gpus}")
    return pool


def _pool_size(concurrency) -> int | tuple[int, int]:
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return concurrency
    if (isinstance(concurrency, tuple) and len(concurrency) == 2
            and all(isinstance(c, int) and not isinstance(c, bool) for c in concurrency)
            and 1 <= concurrency[0] <= concurrency[1]):
        return concurrency if concurrency[0] < concurrency[1] else concurrency[0]
    raise ValueError(f"concurrency must be a positive int or (min, max) with 1 <= min <= max, got {concurrency!r}")


def _graph_model_config(compiled):
    """What the graph's model stage loads (`ModelConfig`): the stage that names a model with
    the most options (the engine stage, not the tokenizer's)."""
    stages = [s for s in compiled.stages if compiled.configs[s.name].engine is not None]
    if not stages:
        raise ValueError(f"model_or_graph: graph {compiled.name!r} has no stage with a 'model' option")
    return compiled.configs[max(stages, key=lambda s: len(s.options)).name].model

