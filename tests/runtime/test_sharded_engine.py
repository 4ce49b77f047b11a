"""A tensor-parallel engine (`tensor_parallel_size=2`: the engine's process plus one Ray
shard actor) generates, token for token, what the unsharded engine generates."""

from __future__ import annotations

import pytest

from tideflow import LLM, SamplingParams
from tideflow.graphs import Graph

# short and long prompts, two sharing a prefix; a small token budget splits the long ones
# into chunks, so steps mix fresh prefills, later chunks, prefix hits and decodes
PROMPTS = [
    "def add(a, b):",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "The quick brown fox jumps over the lazy dog. " * 3 + "Then it",
    "import os\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n" * 2,
]
OPTIONS = dict(dtype="float64", max_model_len=192, num_kv_blocks=96, block_size=8, max_num_batched_tokens=48)
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def _tokens(llm: LLM) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


@pytest.fixture(scope="module")
def unsharded_tokens(tiny_model_dir):
    """kind -> the greedy tokens of the unsharded engine."""
    made: dict[str, list[list[int]]] = {}

    def get(kind: str) -> list[list[int]]:
        if kind not in made:
            made[kind] = _tokens(LLM(tiny_model_dir(kind), **OPTIONS))
        return made[kind]

    return get


@pytest.mark.parametrize("kind", ["llama", "mixtral"])
def test_two_shards_generate_the_unsharded_tokens(kind, tiny_model_dir, unsharded_tokens, ray_session):
    path = tiny_model_dir(kind)
    expected = unsharded_tokens(kind)
    sharded = LLM(path, tensor_parallel_size=2, **OPTIONS)
    try:
        runner = sharded.engine.runner
        assert len(runner.workers) == 1
        text = sharded.engine.hf_config.get_text_config()
        assert runner.kv_cache.k.shape[2] == text.num_key_value_heads // 2  # each rank caches its kv heads
        assert _tokens(sharded) == expected
    finally:
        sharded.engine.runner.close()


def test_a_graph_stage_with_two_shards_generates_the_unsharded_tokens(tiny_model_dir, unsharded_tokens, ray_session):
    path = tiny_model_dir("llama")
    g = Graph("sharded")
    text = {"model": path}
    engine = g.stage("engine", "engine", shards=2, options={"model": path, **OPTIONS})
    g.stage("tokenize", "tokenizer", num_cpus=0, options=text) >> engine >> g.stage("detokenize", "detokenizer", num_cpus=0, options=text)
    handle = g.deploy(recovery=False)
    try:
        out = handle.generate(PROMPTS, GREEDY)
        assert [o.outputs[0].token_ids for o in out] == unsharded_tokens("llama")
        assert handle.stats()["engine"][0]["batches_in"] > 0
        groups = ray_session.util.placement_group_table().values()
        assert any(pg["state"] == "CREATED" and len(pg["bundles"]) == 1 for pg in groups)  # the stage's second shard
    finally:
        handle.shutdown()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(tensor_parallel_size=3), r"tensor_parallel_size \(3\) must divide num_attention_heads"),
        (dict(tensor_parallel_size=0), "tensor_parallel_size must be a positive integer"),
        (dict(tensor_parallel_size=2, model_impl="transformers"), "tensor_parallel_size > 1 runs tideflow's packed decoder"),
    ],
)
def test_bad_tensor_parallel_sizes_raise_naming_the_option(options, message, tiny_model_dir):
    with pytest.raises(ValueError, match=message):
        LLM(tiny_model_dir("llama"), dtype="float64", **options)
