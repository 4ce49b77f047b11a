"""The built-in graphs. Each gives the same greedy output as the in-process engine.

- `colocated`: tokenizer -> engine (prefill and decode in one actor, `replicas` of them)
  -> detokenizer.
- `disaggregated`: tokenizer -> prefill pool -> decode pool -> detokenizer; prefill hands
  each sequence's KV to a decode replica by object reference. `prefill_resources` /
  `decode_resources` (custom Ray resources) pin each pool to the nodes that offer them.

Light stages (tokenizer, detokenizer) ask for no CPU so that on a small machine the model
stages get the cores.
"""

from __future__ import annotations

from collections.abc import Mapping

from tideflow.graphs.graph import Graph


def _text_options(model: str, engine_options: dict) -> dict:
    opts = {"model": model}
    for key in ("tokenizer", "trust_remote_code"):
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
