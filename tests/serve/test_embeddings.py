"""/v1/embeddings on the stand-in server: OpenAI's shape, float and base64, last and mean
pooling equal to transformers' normalized hidden states in float64, and its bad inputs."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from tests.serve.stand_in import call, stand_in_app


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def app(model):
    return stand_in_app(model, dtype="float64")


def _reference(model, ids, pooling):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float64).eval()
    with torch.no_grad():
        h = hf.model(torch.tensor([ids])).last_hidden_state[0]
    return torch.nn.functional.normalize(h[-1] if pooling == "last" else h.mean(0), dim=0)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_embeddings_equal_transformers(app, model, pooling):
    inputs = [[5, 9, 11, 30], [7, 8]]
    status, body = call(app, "POST", "/v1/embeddings", {"input": inputs, "pooling": pooling})
    assert status == 200, body
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    for ids, item in zip(inputs, body["data"]):
        got = torch.tensor(item["embedding"], dtype=torch.float64)
        assert torch.allclose(got, _reference(model, ids, pooling), atol=1e-9)


def test_base64_and_text(app):
    _, plain = call(app, "POST", "/v1/embeddings", {"input": "hello world"})
    status, body = call(app, "POST", "/v1/embeddings", {"input": "hello world", "encoding_format": "base64"})
    assert status == 200
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, plain["data"][0]["embedding"], atol=1e-6)


@pytest.mark.parametrize("body, param", [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": [5, 99999]}, "input"),
    ({"input": 5}, "input"),
    ({}, "input"),
    ({"input": "hi", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "hi", "dimensions": 8}, "dimensions"),
    ({"input": "hi", "pooling": "max"}, "pooling"),
    ({"input": "hi", "model": "gpt-17"}, "model"),
])
def test_bad_embedding_requests(app, body, param):
    status, answer = call(app, "POST", "/v1/embeddings", body)
    assert status in (400, 404) and answer["error"]["param"] == param, answer
