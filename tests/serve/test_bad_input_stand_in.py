"""The bad-input matrix (test_bad_input.CASES) on a Ray-free stand-in server: every case is
the same 400/404 naming the same parameter; unknown fields are ignored and the new sampling
fields are accepted."""

from __future__ import annotations

import pytest

from tests.serve.stand_in import call, stand_in_app

from .test_bad_input import CASES, GOOD


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    return stand_in_app(tiny_model_dir("llama"), dtype="float32")


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
