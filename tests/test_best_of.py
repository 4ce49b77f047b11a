"""best_of: best_of completions are sampled and the n with the highest cumulative logprob come
back, numbered 0..n-1, on LLM and over HTTP."""

from __future__ import annotations

import pytest

from tests.serve.stand_in import call, stand_in_app
from tideflow import LLM, SamplingParams

PROMPT = {"prompt_token_ids": [5, 9, 11, 30]}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama")


def test_llm_returns_the_best_of_the_sampled(model):
    llm = LLM(model, dtype="float64")
    base = SamplingParams(max_tokens=6, seed=11, ignore_eos=True)
    (everything,) = llm.generate([PROMPT], base.replace(n=4, logprobs=0), use_tqdm=False)
    ranked = sorted(everything.outputs, key=lambda c: -c.cumulative_logprob)
    (best,) = llm.generate([PROMPT], base.replace(n=2, best_of=4), use_tqdm=False)
    assert [c.index for c in best.outputs] == [0, 1]
    assert [c.token_ids for c in best.outputs] == [c.token_ids for c in ranked[:2]]
    assert all(c.logprobs is None and c.cumulative_logprob is None for c in best.outputs)
    (kept,) = llm.generate([PROMPT], base.replace(n=1, best_of=4, logprobs=1), use_tqdm=False)
    assert kept.outputs[0].cumulative_logprob == pytest.approx(ranked[0].cumulative_logprob)


def test_best_of_must_cover_n():
    with pytest.raises(ValueError, match="best_of"):
        SamplingParams(n=3, best_of=2)


def test_best_of_over_http(model):
    app = stand_in_app(model, dtype="float32")
    status, body = call(app, "POST", "/v1/completions",
                        {"prompt": "hello", "max_tokens": 4, "n": 2, "best_of": 3, "seed": 1})
    assert status == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1] and all(c["logprobs"] is None for c in body["choices"])
