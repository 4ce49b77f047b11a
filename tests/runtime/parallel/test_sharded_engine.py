"""A tensor-parallel engine (`tensor_parallel_size=2`: the engine's process plus one Ray
shard actor) generates, token for token, what the unsharded engine generates."""

from __future__ import annotations

import numpy as np
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


KV_PROMPT = list(range(5, 40))  # 35 tokens: 5 blocks of 8, the last one partly filled


def _prefilled_kv(llm: LLM):
    """Prefill KV_PROMPT and read its K/V back through the runner: [layers, tokens, kv_heads, head_dim]."""
    request = llm.engine.add_request("kv", KV_PROMPT, GREEDY)
    seq = request.seqs[0]
    while seq.num_computed_tokens < len(KV_PROMPT):
        llm.engine.step()
    kv = llm.engine.runner.read_kv(seq.block_table, len(KV_PROMPT))
    llm.engine.abort_request("kv")
    return kv


@pytest.fixture(scope="module")
def unsharded(tiny_model_dir):
    """kind -> (greedy tokens, K/V of KV_PROMPT) of the unsharded engine."""
    made: dict[str, tuple] = {}

    def get(kind: str) -> tuple:
        if kind not in made:
            llm = LLM(tiny_model_dir(kind), **OPTIONS)
            made[kind] = (_tokens(llm), _prefilled_kv(llm))
        return made[kind]

    return get


@pytest.mark.parametrize("kind", ["llama", "mixtral"])
def test_two_shards_generate_the_unsharded_tokens(kind, tiny_model_dir, unsharded, ray_session):
    path = tiny_model_dir(kind)
    expected, (k, v) = unsharded(kind)
    sharded = LLM(path, tensor_parallel_size=2, **OPTIONS)
    try:
        runner = sharded.engine.runner
        assert len(runner.workers) == 1
        text = sharded.engine.hf_config.get_text_config()
        heads = text.num_key_value_heads // 2
        assert runner.kv_cache.k.shape[2] == heads  # each rank caches its kv heads
        assert _tokens(sharded) == expected

        # K/V handed over (disaggregated prefill -> decode) reads in the unsharded layout,
        # and a whole K/V written in lands each rank's heads in its own cache
        sk, sv = _prefilled_kv(sharded)
        np.testing.assert_allclose(sk, k, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(sv, v, rtol=1e-10, atol=1e-12)
        table = [90, 91, 92, 93, 94]
        runner.write_kv(table, k, v)
        back_k, back_v = runner.read_kv(table, len(KV_PROMPT))
        assert np.array_equal(back_k, k) and np.array_equal(back_v, v)
        assert np.array_equal(runner.kv_cache.read(table, len(KV_PROMPT))[0], k[:, :, :heads])
    finally:
        sharded.engine.runner.close()


def test_sharded_prefill_and_decode_stages_generate_the_unsharded_tokens(tiny_model_dir, unsharded, ray_session):
    """Disaggregated, both pools sharded: prefill hands each sequence's K/V (gathered from its
    two ranks) to decode (which splits it over its own two)."""
    path = tiny_model_dir("llama")
    g = Graph("sharded")
    text, opts = {"model": path}, {"model": path, **OPTIONS}
    prefill = g.stage("prefill", "prefill", num_cpus=0.5, shards=2, options=opts)
    decode = g.stage("decode", "decode", num_cpus=0.5, shards=2, options=opts)
    tokenize = g.stage("tokenize", "tokenizer", num_cpus=0, options=text)
    tokenize >> prefill >> decode >> g.stage("detokenize", "detokenizer", num_cpus=0, options=text)
    handle = g.deploy(recovery=False)
    try:
        out = handle.generate(PROMPTS, GREEDY)
        assert [o.outputs[0].token_ids for o in out] == unsharded("llama")[0]
        assert handle.stats()["decode"][0]["batches_in"] > 0
        # one group per replica, its bundle 0 for the stage actor (rank 0), bundle 1 for rank 1
        groups = [pg for pg in ray_session.util.placement_group_table().values() if pg["state"] == "CREATED"]
        for stage in ("prefill", "decode"):
            (group,) = [pg for pg in groups if pg["name"] == f"sharded/{stage}/0"]
            assert group["strategy"] == "PACK" and len(group["bundles"]) == 2
        assert not [pg for pg in groups if pg["name"] == ""]  # the shard workers made no group of their own
    finally:
        handle.shutdown()
    table = ray_session.util.placement_group_table().values()
    assert {pg["state"] for pg in table if pg["name"].startswith("sharded/")} == {"REMOVED"}


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


def test_two_shards_give_the_unsharded_prompt_logprobs(tiny_model_dir, ray_session):
    path = tiny_model_dir("llama")
    params = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=2)
    expected = LLM(path, **OPTIONS).generate(PROMPTS[:3], params, use_tqdm=False)
    sharded = LLM(path, tensor_parallel_size=2, **OPTIONS)
    try:
        got = sharded.generate(PROMPTS[:3], params, use_tqdm=False)
        for g, e in zip(got, expected):
            assert g.prompt_logprobs[0] is None and len(g.prompt_logprobs) == len(e.prompt_logprobs)
            for ge, ee in zip(g.prompt_logprobs[1:], e.prompt_logprobs[1:]):
                assert ge.keys() == ee.keys()
                assert all(abs(ge[t].logprob - ee[t].logprob) < 1e-9 and ge[t].rank == ee[t].rank for t in ge)
        with pytest.raises(ValueError, match="pooling"):
            sharded.generate(PROMPTS[:1], SamplingParams(max_tokens=1, pooling="last"), use_tqdm=False)
    finally:
        sharded.engine.runner.close()
