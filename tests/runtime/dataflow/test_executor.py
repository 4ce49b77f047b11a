"""Graphs deployed on Ray: parity with the engine (structured-output requests included),
streaming, backpressure, and a dead stage that fails its requests instead of hanging them."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tideflow import SamplingParams
from tideflow.graphs import Graph
from tideflow.graphs.builtin import colocated, disaggregated
from tideflow.runtime.dataflow.collector import RequestError
from tideflow.runtime.dataflow.executor import NAMESPACE

from tests.graphs.parity import mixed_requests, reference_tokens


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama")


# structured requests added to the workload: (constraint, check of the output text)
STRUCTURED = [
    ({"json": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
               "required": ["n"], "additionalProperties": False}}, lambda t: 0 <= json.loads(t)["n"] <= 99),
    ({"regex": r"[a-z]{3,6}"}, lambda t: re.fullmatch(r"[a-z]{3,6}", t) is not None),
    ({"choice": ["yes", "no"]}, lambda t: t in ("yes", "no")),
]


@pytest.fixture(scope="module")
def workload(model):
    prompts, params = mixed_requests(512, count=20, seed=1)
    for i, (constraint, _) in enumerate(STRUCTURED):  # sampled (seeded), then the mask is all that keeps them valid
        prompts.append({"prompt_token_ids": [7 + i, 9, 11]})
        params.append(SamplingParams(seed=i, max_tokens=24, structured_outputs=constraint))
    return prompts, params, reference_tokens(model, prompts, params)


@pytest.mark.parametrize("name", ["colocated", "disaggregated"])
def test_deployed_graph_equals_engine_and_streams(ray_session, model, workload, name):
    prompts, params, reference = workload
    # one prefill replica: the KV handover is what differs; two decode replicas share the load
    graph = colocated(model, dtype="float64") if name == "colocated" else disaggregated(model, prefill=1, dtype="float64")
    handle = graph.deploy()
    try:
        # actors are named {graph}/{stage}/{index} in the tideflow namespace
        for spec in handle.graph.stages:
            for i in range(spec.replicas):
                assert ray_session.get_actor(f"{name}/{spec.name}/{i}", namespace=NAMESPACE)
        out = handle.generate(prompts, params)
        assert [o.outputs[0].token_ids for o in out] == reference
        for o, (_, valid) in zip(out[-len(STRUCTURED):], STRUCTURED):
            assert valid(o.outputs[0].text) and o.outputs[0].finish_reason == "stop", o.outputs[0].text

        async def stream():
            return [o async for o in handle.submit(prompts[3], params[3].replace(max_tokens=12, ignore_eos=True))]

        steps = asyncio.run(stream())
        tokens = [s.outputs[0].token_ids for s in steps]
        assert len(steps) >= 2 and all(a == b[: len(a)] and len(a) < len(b) for a, b in zip(tokens, tokens[1:]))
        assert [s.finished for s in steps] == [False] * (len(steps) - 1) + [True]
        assert tokens[-1] == handle.generate([prompts[3]], params[3].replace(max_tokens=12, ignore_eos=True))[0].outputs[0].token_ids
        assert "".join([steps[0].outputs[0].text]) and steps[-1].outputs[0].text.startswith(steps[0].outputs[0].text)

        stats = handle.stats()
        engine_stage = "engine" if name == "colocated" else "decode"
        assert sum(r["batches_in"] for r in stats[engine_stage]) > 0
        # recovery is on by default: every replica holds the real recovery hooks
        assert all(r["recovery_hooks"] == "RecoveryHooks" for s in handle.graph.stages for r in stats[s.name])
        assert stats["collector"] == {"in_flight": 0, "dead": []}
    finally:
        handle.shutdown()


def test_slow_stage_pushes_back_and_nothing_is_lost(ray_session, model):
    g = Graph("backpressure")
    tok = g.stage("tokenize", "tokenizer", num_cpus=0, options={"model": model})
    eng = g.stage("engine", "engine", num_cpus=1, options={"model": model, "dtype": "float32", "max_pending": 4})
    out = g.stage("detokenize", "tests.runtime.dataflow.slow_roles:SlowDetokenizer", num_cpus=0, options={"model": model})
    tok >> eng >> out
    handle = g.deploy(inbox_size=2)
    try:
        params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)

        async def one(i):
            last = None
            async for last in handle.submit(f"def f{i}(x):", params):
                pass
            return last

        async def many():  # 24 requests entering one by one, as separate batches
            return await asyncio.gather(*(one(i) for i in range(24)))

        result = asyncio.run(many())
        assert [len(o.outputs[0].token_ids) for o in result] == [12] * 24
        assert all(o.finished for o in result)
        stats = handle.stats()
        for stage in ("tokenize", "engine", "detokenize"):
            for replica in stats[stage]:
                assert replica["max_inbox"] <= replica["inbox_size"] == 2
        # the slow stage filled its inbox; the engine, holding max_pending requests, stopped
        # taking input and filled its own; so did the tokenizer in front of it
        assert [stats[s][0]["max_inbox"] for s in ("tokenize", "engine", "detokenize")] == [2, 2, 2]
    finally:
        handle.shutdown()


def test_a_dead_stage_fails_its_requests_instead_of_hanging(ray_session, model):
    handle = colocated(model, dtype="float32", name="doomed").deploy()
    try:
        async def run():
            stream = handle.submit("def f(x):", SamplingParams(temperature=0, max_tokens=400, ignore_eos=True))
            first = await stream.__anext__()
            ray_session.kill(ray_session.get_actor("doomed/engine/0", namespace=NAMESPACE))
            with pytest.raises(RequestError, match="doomed/engine/0 died"):
                async for _ in stream:
                    pass
            return first

        first = asyncio.run(asyncio.wait_for(run(), timeout=120))
        assert not first.finished
        with pytest.raises(RequestError, match="died"):
            handle.generate(["x"], SamplingParams(max_tokens=2))
        assert ray_session.get(handle.collector.status.remote())["dead"] == ["doomed/engine/0"]
    finally:
        handle.shutdown()
