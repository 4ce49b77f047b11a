"""The built-in graphs. Each gives the same greedy output as the in-process engine.

- `colocated`: tokenizer -> engine (prefill and decode in one actor, `replicas` of them)
  -> detokenizer.
- `disaggregated`: tokenizer -> prefill pool -> decode pool -> detokenizer; prefill hands
  each sequence's KV to a decode replica by object reference. `prefill_resources` /
  `decode_resources` (custom Ray resources) pin each pool to the nodes that offer them.
- `multimodal`: tokenizer -> encoder pool (vision tower and projector, features cached by
  image hash) -> engine -> detokenizer; the features ride beside the batch to the engine.
- `moe`: tokenizer -> engine -> detokenizer for a mixture-of-experts model, the engine's
  experts moved onto `expert_actors` Experts actors that the engine replica starts and owns
  (one set per replica). The expert actors are not a stage of the graph: no batches flow
  through them; the engine calls them inside each MoE layer of every step, the way a
  sharded stage's rank actors are called. So the graph keeps its data path as it is and
  says where the experts run in the engine stage's options (`expert_actors`,
  `expert_placement`, `expert_load`, `expert_cpus`); actors owned by the replica live and
  die with it, so no named-actor lookup can find stale ones after a restart.

Light stages (tokenizer, detokenizer) ask for no CPU so that on a small machine the model
stages get the cores.

`BUILTIN_GRAPHS` maps each one's name to its builder; callers that take a graph by name (serve's
`graph=` argument) look it up with `builtin_graph(name)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from tideflow.config import DEFAULT_EXPERT_CPUS
from tideflow.graphs.graph import Graph


def _text_options(model: str, engine_options: dict) -> dict:
    opts = {"model": model}
    for key in ("tokenizer", "trust_remote_code", "chat_template", "gguf_file"):
        if key in engine_options:
            opts[key] = engine_options[key]
    return opts


def colocated(
    model: str,
    *,
    replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    name: str = "colocated",
    **engine_options,
) -> Graph:
    g = Graph(name)
    text = _text_options(model, engine_options)
    tok = g.stage("tokenize", "tokenizer", num_cpus=0, options=text)
    eng = g.stage(
        "engine", "engine", num_cpus=num_cpus, num_gpus=num_gpus, replicas=replicas,
        options={"model": model, **engine_options},
    )
    out = g.stage("detokenize", "detokenizer", num_cpus=0, options=text)
    tok >> eng >> out
    return g


def disaggregated(
    model: str,
    prefill: int = 2,
    decode: int = 2,
    *,
    prefill_cpus: float = 0.5,
    decode_cpus: float = 0.5,
    prefill_gpus: float = 0.0,
    decode_gpus: float = 0.0,
    prefill_resources: Mapping[str, float] | None = None,
    decode_resources: Mapping[str, float] | None = None,
    name: str = "disaggregated",
    **engine_options,
) -> Graph:
    g = Graph(name)
    text = _text_options(model, engine_options)
    opts = {"model": model, **engine_options}
    tok = g.stage("tokenize", "tokenizer", num_cpus=0, options=text)
    pre = g.stage("prefill", "prefill", num_cpus=prefill_cpus, num_gpus=prefill_gpus, resources=prefill_resources,
                  replicas=prefill, options=opts)
    dec = g.stage("decode", "decode", num_cpus=decode_cpus, num_gpus=decode_gpus, resources=decode_resources,
                  replicas=decode, options=opts)
    out = g.stage("detokenize", "detokenizer", num_cpus=0, options=text)
    tok >> pre >> dec >> out
    return g


def multimodal(
    model: str,
    encoders: int = 1,
    *,
    replicas: int = 1,
    encoder_cpus: float = 0.5,
    encoder_gpus: float = 0.0,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    encoder_cache_size: int = 1024,
    name: str = "multimodal",
    **engine_options,
) -> Graph:
    """tokenizer -> encoder pool -> engine -> detokenizer, for a LLaVA-style model. The
    `encoders` replicas run the vision tower and projector (each caching the features of up
    to `encoder_cache_size` images, rows routed by image so repeats hit); the engine merges
    the features at the image-token positions and runs the language model."""
    g = Graph(name)
    text = _text_options(model, engine_options)
    encoder_opts = {"model": model, "encoder_cache_size": encoder_cache_size}
    for key in ("dtype", "device", "trust_remote_code", "num_threads"):
        if key in engine_options:
            encoder_opts[key] = engine_options[key]
    tok = g.stage("tokenize", "tokenizer", num_cpus=0, options=text)
    enc = g.stage("encode", "encoder", num_cpus=encoder_cpus, num_gpus=encoder_gpus, replicas=encoders,
                  options=encoder_opts)
    eng = g.stage("engine", "engine", num_cpus=num_cpus, num_gpus=num_gpus, replicas=replicas,
                  options={"model": model, **engine_options})
    out = g.stage("detokenize", "detokenizer", num_cpus=0, options=text)
    tok >> enc >> eng >> out
    return g


def moe(
    model: str,
    expert_actors: int = 2,
    *,
    expert_placement: str = "even",
    expert_cpus: float = DEFAULT_EXPERT_CPUS,
    replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    name: str = "moe",
    **engine_options,
) -> Graph:
    """tokenizer -> engine (attention and routing; experts on `expert_actors` actors) ->
    detokenizer. `expert_placement`: "even" or "balanced" (by `expert_load`, a recorded
    `[layer][expert]` token count such as the `expert_tokens` stat of a previous run, else by
    a warm-up). Each expert actor asks for `expert_cpus` Ray CPUs (a quarter by default: they
    mostly wait for their layer's rows). Raises ValueError naming `expert_actors` for a dense
    model or a count outside [1, experts per layer]."""
    from tideflow.config import ExpertParallelConfig

    _check_moe(model, expert_actors, bool(engine_options.get("trust_remote_code", False)))
    ExpertParallelConfig(expert_actors, expert_placement, num_cpus=expert_cpus)  # the other checks, before deploying
    g = Graph(name)
    text = _text_options(model, engine_options)
    opts = {"model": model, "expert_actors": expert_actors, "expert_placement": expert_placement,
            "expert_cpus": expert_cpus, **engine_options}
    tok = g.stage("tokenize", "tokenizer", num_cpus=0, options=text)
    eng = g.stage("engine", "engine", num_cpus=num_cpus, num_gpus=num_gpus, replicas=replicas, options=opts)
    out = g.stage("detokenize", "detokenizer", num_cpus=0, options=text)
    tok >> eng >> out
    return g


def _check_moe(model: str, expert_actors, trust_remote_code: bool) -> None:
    """`expert_actors` against the model's routed experts (reads its config only)."""
    from transformers import AutoConfig

    from tideflow.runtime.parallel.expert_placement import check_expert_actors
    from tideflow.models.loader import num_routed_experts

    check_expert_actors(expert_actors, num_routed_experts(AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)))


# name -> builder `(model, **options) -> Graph`
BUILTIN_GRAPHS: Mapping[str, Callable[..., Graph]] = MappingProxyType({
    "colocated": colocated,
    "disaggregated": disaggregated,
    "moe": moe,
    "multimodal": multimodal,
})


def builtin_graph(name: str) -> Callable[..., Graph]:
    """The builder of the built-in graph `name`. Raises ValueError naming the known ones."""
    try:
        return BUILTIN_GRAPHS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown built-in graph {name!r}; known: {', '.join(BUILTIN_GRAPHS)}") from None
