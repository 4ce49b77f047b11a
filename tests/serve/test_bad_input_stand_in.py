"""The bad-input matrix (test_bad_input.CASES) on a Ray-free stand-in server: every case is
the same 400/404 naming the same parameter; unknown fields are ignored and the new sampling
fields are accepted; text too large for the context is refused without tokenizing it."""

from __future__ import annotations

import pytest

from tests.serve.stand_in import call, stand_in_server
from tideflow.serve.server import build_asgi_app

from .test_bad_input import CASES, GOOD, HUGE


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    return stand_in_server(tiny_model_dir("llama"), dtype="float32")


@pytest.fixture(scope="module")
def app(server):
    return build_asgi_app(server)


def test_the_matrix_on_the_stand_in(app):
    failures = []
    for case, path, body, ctype, status, param in CASES:
        got, answer = call(app, "POST", f"/v1/{path}", body, ctype)
        error = answer.get("error") if isinstance(answer, dict) else None
        if got != status or error is None or error["param"] != param or error["type"] != "invalid_request_error":
            failures.append(f"{case}: got {got} {answer}, expected {status} param={param}")
    assert not failures, "\n".join(failures)


def test_unknown_fields_are_ignored_and_new_fields_accepted(app):
    body = {**GOOD, "frobnicate": {"x": 1}, "logit_bias": {"7": 100}, "allowed_token_ids": [7, 8],
            "bad_words": ["zzz"], "stop_token_ids": [9], "skip_special_tokens": False}
    status, answer = call(app, "POST", "/v1/completions", body)
    assert status == 200, answer
    assert answer["usage"]["completion_tokens"] == 8
    status, answer = call(app, "POST", "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "logit_bias": {"7": 100},
                           "temperature": 0, "whatever": True})
    assert status == 200, answer


def test_prompt_logprobs_field(app):
    status, answer = call(app, "POST", "/v1/completions", {**GOOD, "prompt_logprobs": 1, "max_tokens": 1})
    assert status == 200, answer
    entries = answer["choices"][0]["prompt_logprobs"]
    assert entries[0] is None and all(1 <= len(e) <= 2 for e in entries[1:])

    status, answer = call(app, "POST", "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "prompt_logprobs": 0})
    assert status == 200, answer
    assert answer["prompt_logprobs"][0] is None and all(len(e) == 1 for e in answer["prompt_logprobs"][1:])


def test_text_too_large_for_the_context_is_refused_before_tokenizing(app, server, monkeypatch):
    def tokenize(*args, **kwargs):
        raise AssertionError("the tokenizer ran")

    with monkeypatch.context() as patch:
        patch.setattr(server.info.prompts, "encode_text", tokenize)
        patch.setattr(server.info.prompts, "encode_chat", tokenize)
        for path, body, param in [("completions", {**GOOD, "prompt": HUGE}, "prompt"),
                                  ("chat/completions", {"messages": [{"role": "user", "content": "é" * 40_000},
                                                                     {"role": "user", "content": "é" * 40_000}]},
                                   "messages"),  # 160,000 bytes over two messages, past 1024 * 50
                                  ("embeddings", {"input": HUGE}, "input")]:
            status, answer = call(app, "POST", f"/v1/{path}", body)
            assert status == 400, answer
            assert (answer["error"]["param"], answer["error"]["code"]) == (param, "context_length_exceeded")
            assert "bytes of text" in answer["error"]["message"]
    # the bound: the context's length in the vocabulary's longest tokens (a newline and 24 spaces
    # written as 50 bytes of byte-level entries, for the tiny model); at it, the tokenizer runs
    # and the token count decides
    assert server.info.max_token_bytes == 50
    at_bound = "x " * (server.info.max_model_len * server.info.max_token_bytes // 2)
    status, answer = call(app, "POST", "/v1/completions", {**GOOD, "prompt": at_bound})
    assert status == 400 and "bytes of text" not in answer["error"]["message"]
    assert answer["error"]["code"] == "context_length_exceeded"
