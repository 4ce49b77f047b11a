"""allowed_token_ids, bad_words and logit_bias shape what a request samples, on the engine
(LLM) and through the graph's Arrow encoding of SamplingParams."""

from __future__ import annotations

import pytest
import torch

from tideflow import LLM, SamplingParams
from tideflow.runtime.edges import schemas
from tideflow.runtime.engine.core.sequence import Sequence
from tideflow.runtime.engine.logit_constraints import apply_constraints, banned_tokens

PROMPT = {"prompt_token_ids": [5, 9, 11, 30]}


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir("llama"), dtype="float64")


def _tokens(llm, **params) -> list[int]:
    (out,) = llm.generate([PROMPT], SamplingParams(max_tokens=8, ignore_eos=True, **params), use_tqdm=False)
    return out.outputs[0].token_ids


def test_allowed_token_ids_only(llm):
    assert set(_tokens(llm, seed=1, allowed_token_ids=[40, 41, 42])) <= {40, 41, 42}
    assert _tokens(llm, temperature=0, allowed_token_ids=[77]) == [77] * 8


def test_logit_bias_forces_and_forbids(llm):
    assert _tokens(llm, temperature=0, logit_bias={99: 100}) == [99] * 8
    greedy = _tokens(llm, temperature=0)
    avoided = _tokens(llm, temperature=0, logit_bias={greedy[0]: -100})
    assert avoided[0] != greedy[0]


def test_logit_bias_is_clamped():
    assert SamplingParams(logit_bias={3: 500, 4: -1e9}).logit_bias == {3: 100.0, 4: -100.0}


def test_bad_words_are_never_generated(llm):
    tok = llm.get_tokenizer()
    greedy = _tokens(llm, temperature=0)
    word = tok.decode(greedy[:2]).strip()
    out = _tokens(llm, temperature=0, bad_words=[word])
    assert word not in tok.decode(out)


def test_banned_tokens_follow_the_word_prefix():
    seq = Sequence("r", 0, [1, 2, 7, 8], 2, SamplingParams(), max_tokens=8)
    seq.bad_words_ids = ((8, 9), (5,), (1, 2, 3))
    assert banned_tokens(seq) == {9, 5}  # (1, 2) is in the prompt, not the output: not a prefix
    logits = torch.zeros(1, 12, dtype=torch.float64)
    apply_constraints(logits, [seq])
    assert torch.isinf(logits[0, [5, 9]]).all() and torch.isfinite(logits[0, [3, 8]]).all()


def test_new_fields_survive_the_arrow_encoding():
    import pyarrow as pa

    params = SamplingParams(logit_bias={3: 1.5}, allowed_token_ids=[1, 2], bad_words=["no"], prompt_logprobs=2)
    (row,) = pa.array([schemas.params_to_row(params)], schemas.SAMPLING).to_pylist()
    assert schemas.row_to_params(row) == params
