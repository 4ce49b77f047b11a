"""`response_format` and vLLM's `structured_outputs` on a Ray-free stand-in server: each form
reaches the engine as its constraint, and the answers parse under it (the bad forms are in
the bad-input matrix, test_bad_input.CASES)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from tests.serve.stand_in import call, stand_in_app

CHAT = {"messages": [{"role": "user", "content": "Describe a person"}], "max_tokens": 80}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                          "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    return stand_in_app(tiny_model_dir("llama"), dtype="float32")


def _chat(app, **fields) -> dict:
    status, answer = call(app, "POST", "/v1/chat/completions", {**CHAT, **fields})
    assert status == 200, answer
    return answer["choices"][0]


def test_chat_json_schema_and_json_object(app):
    for seed in range(4):
        choice = _chat(app, seed=seed, response_format={
            "type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}})
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
        assert choice["finish_reason"] == "stop"
    choice = _chat(app, temperature=0, response_format={"type": "json_object"})
    assert choice["finish_reason"] != "stop" or isinstance(json.loads(choice["message"]["content"]), dict)
    assert choice["message"]["content"].startswith("{")
    free = _chat(app, temperature=0, max_tokens=12, response_format={"type": "text"})
    assert not free["message"]["content"].startswith("{")  # "text" constrains nothing


def test_vllm_structured_outputs_field_on_both_endpoints(app):
    assert _chat(app, seed=1, structured_outputs={"choice": ["alpha", "beta"]})["message"]["content"] in ("alpha", "beta")
    status, answer = call(app, "POST", "/v1/completions", {"prompt": "id:", "max_tokens": 20, "seed": 2,
                                                           "structured_outputs": {"regex": r"[A-Z]{2}-[0-9]{3}"}})
    assert status == 200 and re.fullmatch(r"[A-Z]{2}-[0-9]{3}", answer["choices"][0]["text"]), answer
    status, answer = call(app, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 80, "seed": 3,
                                                           "structured_outputs": {"json": json.dumps(SCHEMA)}})
    assert status == 200
    jsonschema.validate(json.loads(answer["choices"][0]["text"]), SCHEMA)
    status, answer = call(app, "POST", "/v1/completions", {
        "prompt": "x", "max_tokens": 80, "n": 2, "seed": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}})
    assert status == 200
    for c in answer["choices"]:
        jsonschema.validate(json.loads(c["text"]), SCHEMA)
    grammar = 'start: "f(" NUM ")"\nNUM: /[0-9]{1,3}/'
    assert re.fullmatch(r"f\([0-9]{1,3}\)", _chat(app, seed=5, structured_outputs={"grammar": grammar})["message"]["content"])


def test_unknown_options_of_the_structured_outputs_field_are_ignored(app):
    """vLLM's field has more options (whitespace, fallback ...): ignored, as unknown fields are."""
    choice = _chat(app, seed=6, structured_outputs={"choice": ["on", "off"], "disable_fallback": True})
    assert choice["message"]["content"] in ("on", "off")
