"""API keys and limits through Ray Serve (issue 21): the keys and limits reach each replica
in its config, the route prefix Serve adds is no way around the keys, /health and /metrics stay
open, and the x-ratelimit-* headers come back through Serve's proxy. The behaviour in detail is
tested on the stand-in server (test_auth, test_rate_limits, test_breaker)."""

from __future__ import annotations

import aiohttp
import pytest

from .conftest import run, run_app

KEY = "sk-live-3141"
GOOD = {"prompt": "def fibonacci(n):", "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def keyed(serve_port, tiny_model_dir):
    from ray import serve

    args = {"model": tiny_model_dir("llama"), "engine_options": {"dtype": "float32"}, "api_keys": [KEY],
            "rate_limits": {"requests_per_minute": 2}}  # a refill every 30 s: none lands within the test
    srv = run_app(serve_port, "keyed", args, "/keyed")
    yield srv
    serve.delete("keyed")


def test_keys_and_limits_through_serve(keyed):
    async def go():
        out = {}
        async with aiohttp.ClientSession() as session:
            for name, headers in (("none", {}), ("wrong", {"Authorization": "Bearer sk-live-0000"}),
                                  ("right", {"Authorization": f"Bearer {KEY}"})):
                async with session.post(f"{keyed.url}/v1/completions", json=GOOD, headers=headers) as resp:
                    out[name] = resp.status, await resp.json(), dict(resp.headers)
                async with session.get(f"{keyed.url}/v1/models", headers=headers) as resp:
                    out[f"models {name}"] = resp.status
            for path in ("/health", "/metrics", "/openapi.json"):
                async with session.get(f"{keyed.url}{path}") as resp:
                    out[path] = resp.status
        return out

    out = run(go())
    assert [out[k][0] for k in ("none", "wrong", "right")] == [401, 401, 200]
    assert [out[f"models {k}"] for k in ("none", "wrong", "right")] == [401, 401, 200]
    assert out["wrong"][1]["error"]["code"] == "invalid_api_key"
    assert len(out["right"][1]["choices"]) == 1
    assert out["right"][2]["x-ratelimit-limit-requests"] == "2"
    assert out["right"][2]["x-ratelimit-remaining-requests"] == "1"  # the refusals at the door took none
    assert (out["/health"], out["/metrics"], out["/openapi.json"]) == (200, 200, 200)
