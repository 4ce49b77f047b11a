"""The built-in graphs run in-process (`graph.run`): same tokens as the engine, text, stop
strings, chat messages, n > 1 and explicit errors."""

from __future__ import annotations

import pytest

from tideflow import LLM, SamplingParams
from tideflow.graphs.builtin import colocated, disaggregated
from tideflow.runtime.dataflow.collector import RequestError

from .parity import mixed_requests, reference_tokens


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.mark.parametrize("build", [colocated, disaggregated])
def test_graph_run_equals_the_engine(model, build):
    prompts, params = mixed_requests(512)
    reference = reference_tokens(model, prompts, params)
    graph = build(model, dtype="float64") if build is colocated else build(model, prefill=2, decode=2, dtype="float64")
    out = graph.run(prompts, params)
    assert [o.outputs[0].token_ids for o in out] == reference
    assert all(o.finished for o in out)


@pytest.mark.parametrize("build", [colocated, disaggregated])
def test_text_stop_strings_chat_and_n(model, build):
    llm = LLM(model, dtype="float32")
    graph = build(model, dtype="float32")
    prompts = ["def f(x):", {"messages": [{"role": "user", "content": "hi"}]}]
    base = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    expected = llm.generate(prompts[:1], base, use_tqdm=False)[0].outputs[0]
    stop = expected.text[4:7]
    params = [base.replace(stop=[stop]), base.replace(n=2, temperature=1.0, seed=5)]
    out = graph.run(prompts, params)
    cut = out[0].outputs[0]
    assert cut.text == expected.text[: expected.text.index(stop)] and cut.stop_reason == stop
    assert cut.finish_reason == "stop"
    chat = llm.chat(prompts[1]["messages"], params[1], use_tqdm=False)[0]
    assert [c.token_ids for c in out[1].outputs] == [c.token_ids for c in chat.outputs]
    assert [c.text for c in out[1].outputs] == [c.text for c in chat.outputs]


def test_bad_request_fails_explicitly_and_others_complete(model):
    graph = colocated(model, dtype="float32")
    with pytest.raises(RequestError, match="outside the vocabulary"):
        graph.run([{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [5, 100_000]}], SamplingParams(max_tokens=3))


@pytest.mark.parametrize("build", [colocated, disaggregated])
def test_prompt_logprobs_cross_the_graph(model, build):
    params = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=1, n=2)
    prompts = [{"prompt_token_ids": [5, 9, 11, 30, 2]}, {"prompt_token_ids": [8]}]
    expected = LLM(model, dtype="float64").generate(prompts, params, use_tqdm=False)
    out = build(model, dtype="float64").run(prompts, params)
    for got, want in zip(out, expected):
        assert got.prompt_logprobs[0] is None and len(got.prompt_logprobs) == len(want.prompt_token_ids)
        plain = lambda entries: [e and {t: (lp.logprob, lp.rank) for t, lp in e.items()} for e in entries]  # noqa: E731
        assert plain(got.prompt_logprobs) == plain(want.prompt_logprobs)  # decoded tokens are the LLM's own


@pytest.mark.parametrize("build", [colocated, disaggregated])
def test_embeddings_cross_the_graph(model, build):
    params = SamplingParams(max_tokens=1, pooling="mean")
    prompts = [{"prompt_token_ids": [5, 9, 11, 30, 2]}, {"prompt_token_ids": [8]}]
    expected = LLM(model, dtype="float64").generate(prompts, params, use_tqdm=False)
    out = build(model, dtype="float64").run(prompts, params)
    for got, want in zip(out, expected):
        assert got.embedding is not None and got.embedding == pytest.approx(want.embedding, abs=1e-12)


@pytest.mark.parametrize("build", [colocated, disaggregated])
def test_structured_outputs_cross_the_graph(model, build):
    """Constraints travel in the Arrow rows; in the disaggregated graph decode rebuilds each
    matcher from the prefilled token. Same tokens as the engine, and every output parses."""
    import json
    import re

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["n"], "additionalProperties": False}
    constraints = [{"json": schema}, {"regex": r"[a-z]{3,6}"}, {"choice": ["yes", "no"]}, {"json_object": True}]
    params = [SamplingParams(seed=i, n=2, max_tokens=24, structured_outputs=c) for i, c in enumerate(constraints)]
    params.append(SamplingParams(temperature=0, max_tokens=24, structured_outputs=constraints[0]))
    prompts = [{"prompt_token_ids": [5 + i, 9, 11, 30]} for i in range(len(params))]
    expected = LLM(model, dtype="float64").generate(prompts, params, use_tqdm=False)
    graph = build(model, dtype="float64") if build is colocated else build(model, prefill=1, decode=2, dtype="float64")
    out = graph.run(prompts, params)
    assert [[c.token_ids for c in o.outputs] for o in out] == [[c.token_ids for c in o.outputs] for o in expected]
    for first in (out[0], out[4]):
        assert all(0 <= json.loads(c.text)["n"] <= 99 for c in first.outputs)
    assert all(re.fullmatch(r"[a-z]{3,6}", c.text) for c in out[1].outputs)
    assert all(c.text in ("yes", "no") for c in out[2].outputs)
