"""The scoring surface on the package's live server (Ray Serve over a colocated float64 graph):
echo with logprobs and max_tokens 0, embeddings, tokenize/detokenize/version, through the
graph's real stages."""

from __future__ import annotations

import json
import urllib.request

import tideflow


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=120).read())


def test_echo_scoring_embeddings_and_tokenize(server):
    prompt = "def fibonacci(n):"
    tokens = _post(f"{server.url}/tokenize", {"prompt": prompt})["tokens"]
    scored = _post(f"{server.url}/v1/completions",
                   {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 0, "temperature": 0})
    (choice,) = scored["choices"]
    assert choice["text"] == prompt and len(choice["logprobs"]["tokens"]) == len(tokens)
    assert choice["logprobs"]["token_logprobs"][0] is None
    assert all(isinstance(v, float) for v in choice["logprobs"]["token_logprobs"][1:])
    assert _post(f"{server.url}/detokenize", {"tokens": tokens})["prompt"].endswith(prompt)
    embedded = _post(f"{server.url}/v1/embeddings", {"input": [prompt, "x"], "pooling": "mean"})
    assert [d["index"] for d in embedded["data"]] == [0, 1]
    norm = sum(v * v for v in embedded["data"][0]["embedding"])
    assert abs(norm - 1.0) < 1e-9
    version = json.loads(urllib.request.urlopen(f"{server.url}/version", timeout=30).read())
    assert version == {"version": tideflow.__version__}
