"""The chat endpoint with an image over HTTP: a `data:` URL image part gives the float64
greedy tokens of transformers' LLaVA `generate` on the same conversation. The app serves the
tiny LLaVA on the colocated graph (its engine runs the vision tower itself)."""

from __future__ import annotations

import base64
import json
import urllib.request

import pytest

from tests.testing.llava_reference import hf_generate, make_image, png
from .conftest import run_app


@pytest.fixture(scope="module")
def llava_server(serve_port, tiny_model_dir):
    from ray import serve

    srv = run_app(serve_port, "llava", {"model": tiny_model_dir("llava"), "engine_options": {"dtype": "float64"}}, "/llava")
    yield srv
    serve.delete("llava")


def test_data_url_image_equals_hf(llava_server):
    from transformers import AutoTokenizer

    image = make_image(60)
    url = "data:image/png;base64," + base64.b64encode(png(image)).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this?"}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 10, "temperature": 0,
            "logprobs": True, "return_tokens_as_token_ids": True}
    request = urllib.request.Request(
        f"{llava_server.url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        out = json.loads(response.read())
    tokens = [int(t["token"].removeprefix("token_id:")) for t in out["choices"][0]["logprobs"]["content"]]
    messages = [{"role": "user", "content": "<image>\nWhat is this?"}]
    text = AutoTokenizer.from_pretrained(llava_server.model_dir).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    prompt_ids, expected = hf_generate(llava_server.model_dir, text, [image], 10)
    assert tokens == expected
    assert out["usage"]["prompt_tokens"] == len(prompt_ids)
