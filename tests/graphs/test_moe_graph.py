"""The moe graph: with 2 and 4 expert actors, even or balanced placement, its float64 greedy
tokens equal transformers' own `generate` (one prompt at a time) for Mixtral and Qwen2-MoE;
every routed token is run exactly once by an expert actor; bad `expert_actors` fail early.

One case is deployed on Ray (stage actors; the engine's expert actors are its children);
the others run the same graph in-process (`InProcessGraph`), whose engine starts the same
expert actors: each Ray process costs seconds of CPU, and the suite's time is bounded."""

from __future__ import annotations

import random

import pytest
import torch

from tideflow import SamplingParams
from tideflow.graphs.builtin import moe
from tideflow.runtime.parallel.expert_placement import balanced_placement, even_placement
from tideflow.runtime.dataflow.inprocess import InProcessGraph

LENGTHS = [3, 11, 1, 24, 7, 16]
MAX_TOKENS = [12, 6, 10, 8, 12, 5]
TOP_K, NUM_EXPERTS = 2, 4  # the tiny MoE models route each token to 2 of 4 experts
SKEWED = [[500, 10, 10, 10], [10, 10, 400, 20]]  # a recorded trace with one hot expert per layer

CASES = [  # (kind, expert actors, placement, recorded trace, deployed on Ray)
    ("mixtral", 2, "even", None, True),
    ("mixtral", 4, "balanced", None, False),  # placed by a warm-up run
    ("qwen2_moe", 2, "balanced", SKEWED, False),  # placed by a recorded trace
    ("qwen2_moe", 4, "even", None, False),
]


@pytest.fixture(scope="module")
def hf_reference(tiny_model_dir):
    """kind -> (prompts, params, transformers' float64 greedy tokens), computed once per kind."""
    from transformers import AutoModelForCausalLM

    made = {}

    def get(kind: str):
        if kind not in made:
            path = tiny_model_dir(kind)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, experts_implementation="eager").eval()
            rng = random.Random(7)
            prompts = [[rng.randrange(5, model.config.vocab_size) for _ in range(n)] for n in LENGTHS]
            reference = []
            for ids, n in zip(prompts, MAX_TOKENS):
                x = torch.tensor([ids])
                with torch.no_grad():
                    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
                reference.append(out[0, len(ids) :].tolist())
            params = [SamplingParams(temperature=0, max_tokens=n) for n in MAX_TOKENS]
            made[kind] = ([{"prompt_token_ids": p} for p in prompts], params, reference)
        return made[kind]

    return get


def _generate(graph, prompts, params, deployed: bool):
    """(outputs, the engine replica's stats), the graph deployed on Ray or run in-process."""
    if deployed:
        handle = graph.deploy(recovery=False)
        try:
            return handle.generate(prompts, params), handle.stats()["engine"][0]
        finally:
            handle.shutdown()
    runner = InProcessGraph(graph.compile())
    try:
        return runner.generate(prompts, params), runner.stats()["engine"][0]
    finally:
        runner.close()
        runner.roles["engine"][0].engine.experts.close()


@pytest.mark.parametrize(
    ("kind", "actors", "placement", "load", "deployed"), CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES]
)
def test_moe_graph_equals_hf_generate(kind, actors, placement, load, deployed, tiny_model_dir, hf_reference, ray_session):
    prompts, params, reference = hf_reference(kind)
    extra = {} if load is None else {"expert_load": load}
    graph = moe(tiny_model_dir(kind), expert_actors=actors, expert_placement=placement, expert_cpus=0.5, dtype="float64",
                name=f"moe-{kind}-{actors}", **extra)
    out, stats = _generate(graph, prompts, params, deployed)
    got = [o.outputs[0].token_ids for o in out]
    for i, (g, r) in enumerate(zip(got, reference)):
        assert g == r, f"prompt {i}: moe graph {g} != HF {r}"

    layers = stats["expert_layers"]
    even = even_placement(layers, NUM_EXPERTS, actors).to_lists()
    if placement == "even":
        assert stats["expert_placement"] == even and stats["expert_placed_by"] is None
    else:
        placed_by = stats["expert_placed_by"]
        assert stats["expert_load_source"] == ("warmup" if load is None else "trace")
        assert stats["expert_placement"] == balanced_placement(layers, placed_by, actors).to_lists()
        if load is not None:
            assert placed_by == SKEWED and stats["expert_placement"] != even  # the hot experts are replicated
    # every (token, slot) the engine routed ran once on an expert actor: one call per actor per layer at most
    processed = sum(len(p["prompt_token_ids"]) + len(g) - 1 for p, g in zip(prompts, got))
    assert [sum(t) for t in stats["expert_tokens"]] == [TOP_K * processed] * len(layers)
    ran = [[0] * NUM_EXPERTS for _ in layers]
    for actor in stats["expert_actor_stats"]:
        for entry in actor["layers"]:
            for e, n in zip(entry["experts"], entry["tokens"]):
                ran[layers.index(entry["layer"])][e] += n
    assert ran == stats["expert_tokens"]
    assert stats["expert_actor_calls"] <= actors * stats["expert_dispatches"]
    assert stats["expert_dispatch_ms_per_layer"] >= stats["expert_compute_ms_per_layer"] > 0


@pytest.mark.parametrize(
    ("kind", "actors", "message"),
    [
        ("mixtral", 0, r"expert_actors must be an integer in \[1, 4\]"),
        ("qwen2_moe", 5, r"expert_actors must be an integer in \[1, 4\]"),
        ("llama", 1, "expert_actors: the model has no MoE layers"),
    ],
)
def test_bad_expert_actors_raise_naming_the_argument(kind, actors, message, tiny_model_dir):
    with pytest.raises(ValueError, match=message):
        moe(tiny_model_dir(kind), expert_actors=actors)


def test_bad_expert_placement_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="expert_placement must be one of"):
        moe(tiny_model_dir("mixtral"), expert_actors=2, expert_placement="random")


def test_three_expert_actors_with_default_cpus_deploy_and_equal_hf(tiny_model_dir, hf_reference, ray_session):
    """Issue 21: with a whole CPU per expert actor, 3 of them beside the engine never got placed
    on a 2-core machine and the deploy hung. They ask for a quarter each now: the graph asks for
    1.75 CPUs in all (tests/runtime/parallel/test_placement.py checks that against 2) and runs."""
    from tideflow.config import DEFAULT_EXPERT_CPUS

    prompts, params, reference = hf_reference("mixtral")
    graph = moe(tiny_model_dir("mixtral"), expert_actors=3, dtype="float64", name="moe-mixtral-3")
    assert graph.compile().configs["engine"].experts.num_cpus == DEFAULT_EXPERT_CPUS < 1
    out, stats = _generate(graph, prompts, params, deployed=True)
    assert [o.outputs[0].token_ids for o in out] == reference
    assert stats["expert_actors"] == 3 and len(stats["expert_actor_stats"]) == 3
