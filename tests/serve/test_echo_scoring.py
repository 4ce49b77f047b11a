"""Scoring a prompt as lm-evaluation-harness `local-completions` does: `echo: true` with
`logprobs` and `max_tokens` 0 or 1 returns the prompt's tokens with their logprobs (the first
null), then the generated ones; the logprobs equal transformers' in float64."""

from __future__ import annotations

import pytest
import torch

from tests.serve.stand_in import call, stand_in_app

PROMPT = "The quick brown fox jumps over"


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def app(model):
    return stand_in_app(model, dtype="float64")


@pytest.fixture(scope="module")
def reference(model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model)(PROMPT)["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float64).eval()
    with torch.no_grad():
        return ids, hf(torch.tensor([ids])).logits[0].log_softmax(-1)


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_returns_prompt_logprobs(app, reference, max_tokens):
    ids, logprobs = reference
    status, body = call(app, "POST", "/v1/completions",
                        {"prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": max_tokens, "temperature": 0})
    assert status == 200, body
    (choice,) = body["choices"]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + max_tokens
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for pos in range(1, len(ids)):
        assert abs(lp["token_logprobs"][pos] - logprobs[pos - 1, ids[pos]].item()) < 1e-9
        assert len(lp["top_logprobs"][pos]) in (1, 2)
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    assert choice["text"].startswith(PROMPT)
    if max_tokens == 0:
        assert choice["text"] == PROMPT and body["usage"]["completion_tokens"] == 0
    else:
        greedy = logprobs[-1].argmax().item()
        assert abs(lp["token_logprobs"][-1] - logprobs[-1, greedy].item()) < 1e-9


def test_echo_logprobs_stream(app):
    status, text = call(app, "POST", "/v1/completions",
                        {"prompt": PROMPT, "echo": True, "logprobs": 0, "max_tokens": 2, "stream": True})
    assert status == 200
    import json

    chunks = [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]
    first = chunks[0]["choices"][0]
    assert first["text"] == PROMPT and first["logprobs"]["token_logprobs"][0] is None
    assert "".join(c["text"] for ch in chunks for c in ch["choices"]).startswith(PROMPT)


def test_max_tokens_zero_without_echo_is_rejected(app):
    status, body = call(app, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 0})
    assert status == 400 and body["error"]["param"] == "max_tokens"
