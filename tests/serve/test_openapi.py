"""`/openapi.json` (issue 21): every route is described, with its request body's fields (the
routes parse their bodies themselves, so the models are named by hand) and the error object;
every reference resolves; with API keys the /v1 operations declare the bearer scheme."""

from __future__ import annotations

import pytest

from tests.serve.stand_in import call, stand_in_server
from tideflow import LLM
from tideflow.serve.config import ServeConfig
from tideflow.serve.protocol import ROLES
from tideflow.serve.server import build_asgi_app

ROUTES = {("/v1/completions", "post"), ("/v1/chat/completions", "post"), ("/v1/embeddings", "post"),
          ("/tokenize", "post"), ("/detokenize", "post"), ("/version", "get"), ("/v1/models", "get"),
          ("/v1/models/{model_id}", "get"), ("/health", "get"), ("/metrics", "get")}


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir("llama"), dtype="float32")


def _document(tiny_model_dir, llm, **config) -> dict:
    app = build_asgi_app(stand_in_server(tiny_model_dir("llama"), ServeConfig(**config), llm=llm))
    status, doc = call(app, "GET", "/openapi.json")
    assert status == 200
    return doc


def _resolve(doc: dict, ref: str) -> dict:
    node = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _refs(node):
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_route_and_its_body_fields_are_described(tiny_model_dir, llm):
    doc = _document(tiny_model_dir, llm)
    assert {(path, method) for path, ops in doc["paths"].items() for method in ops} == ROUTES
    for ref in _refs(doc):  # nothing dangles (pydantic's own $defs were moved into components)
        assert _resolve(doc, ref), ref

    def body(path: str) -> dict:
        schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return _resolve(doc, schema["$ref"])

    completion = body("/v1/completions")
    assert completion["required"] == ["prompt"]
    assert {"prompt", "max_tokens", "temperature", "stream", "logit_bias", "structured_outputs",
            "response_format"} <= set(completion["properties"])
    chat = body("/v1/chat/completions")
    assert {"messages", "tools", "tool_choice", "max_completion_tokens"} <= set(chat["properties"])
    message = _resolve(doc, chat["properties"]["messages"]["items"]["$ref"])
    assert message["properties"]["role"]["enum"] == list(ROLES)
    assert "input" in body("/v1/embeddings")["properties"]
    tokenize = doc["paths"]["/tokenize"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert len(tokenize["anyOf"]) == 2  # a prompt or a conversation
    error = doc["paths"]["/v1/completions"]["post"]["responses"]["400"]["content"]["application/json"]["schema"]
    assert set(_resolve(doc, error["$ref"])["properties"]) == {"error"}
    assert "securitySchemes" not in doc["components"]


def test_with_keys_the_v1_operations_declare_bearer_auth(tiny_model_dir, llm):
    doc = _document(tiny_model_dir, llm, api_keys=("sk-doc",))  # /openapi.json itself stays open
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, ops in doc["paths"].items():
        for op in ops.values():
            guarded = path.startswith("/v1")
            assert ("security" in op) == guarded and ("401" in op["responses"]) == guarded, path
