"""/tokenize, /detokenize and /version in vLLM's shapes, on the stand-in server."""

from __future__ import annotations

import pytest

import tideflow
from tests.serve.stand_in import call, stand_in_app
from tideflow.serve.model_info import ModelInfo


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def app(model):
    return stand_in_app(model, dtype="float32")


def test_tokenize_a_prompt_and_back(app, model):
    info = ModelInfo.load("m", model)
    status, body = call(app, "POST", "/tokenize", {"prompt": "hello world", "return_token_strs": True})
    assert status == 200, body
    assert body["tokens"] == info.tokenizer.encode("hello world") and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == info.max_model_len and len(body["token_strs"]) == body["count"]
    status, plain = call(app, "POST", "/tokenize", {"prompt": "hello world", "add_special_tokens": False})
    assert plain["tokens"] == info.tokenizer.encode("hello world", add_special_tokens=False)
    status, back = call(app, "POST", "/detokenize", {"tokens": plain["tokens"]})
    assert status == 200 and back == {"prompt": info.decode(plain["tokens"])}


def test_tokenize_messages(app, model):
    info = ModelInfo.load("m", model)
    messages = [{"role": "user", "content": "hi"}]
    status, body = call(app, "POST", "/tokenize", {"messages": messages})
    assert status == 200, body
    assert body["tokens"] == info.chat_ids(messages)
    _, without = call(app, "POST", "/tokenize", {"messages": messages, "add_generation_prompt": False})
    assert without["count"] <= body["count"]


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {"prompt": 5}, "prompt"),
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"messages": "hi"}, "messages"),
    ("/tokenize", {"prompt": "x", "model": "gpt-17"}, "model"),
    ("/detokenize", {"tokens": [1, 99999]}, "tokens"),
    ("/detokenize", {"tokens": "1"}, "tokens"),
    ("/detokenize", {}, "tokens"),
])
def test_bad_tokenize_requests(app, path, body, param):
    status, answer = call(app, "POST", path, body)
    assert status in (400, 404) and answer["error"]["param"] == param


def test_version(app):
    assert call(app, "GET", "/version") == (200, {"version": tideflow.__version__})
