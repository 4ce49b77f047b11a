"""A small dedicated server with tight bounds: overload is refused at once with 429 while the
admitted requests complete; then a killed stage actor turns /health to 503, requests fail
fast with 503, and Serve's health checks replace the replica with a fresh graph
(docs/reliability.md fault 7; this server is deleted right after)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from .conftest import metric, metrics, run, run_app


@pytest.fixture(scope="module")
def small_server(serve_port, tiny_model_dir):
    from ray import serve

    args = {"model": tiny_model_dir("llama"), "engine_options": {"dtype": "float32"},
            "max_ongoing_requests": 2, "max_queued_requests": 2, "retry_after_s": 3,
            # replaced 3 failed checks after a stage dies: about 6 s, long after the 503 checks below
            "health_check_period_s": 2}
    srv = run_app(serve_port, "small", args, "/small")
    yield srv
    serve.delete("small")


async def _burst(url: str, count: int):
    body = {"prompt": "def fibonacci(n):", "max_tokens": 200, "ignore_eos": True, "temperature": 0}
    start = time.monotonic()

    async def one(session):
        async with session.post(f"{url}/v1/completions", json=body) as resp:
            payload = await resp.json()
            return resp.status, resp.headers.get("Retry-After"), payload, time.monotonic() - start

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await asyncio.gather(*[one(session) for _ in range(count)])


def test_overload_gets_immediate_429s_while_admitted_requests_complete(small_server):
    before = metrics(small_server.url)
    results = run(_burst(small_server.url, 20))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(ok) + len(refused) == 20, [r[0] for r in results]
    assert len(ok) == 4  # 2 running + 2 queued
    for _, retry_after, payload, _ in refused:
        assert retry_after == "3"
        assert payload["error"]["type"] == "rate_limit_error" and payload["error"]["code"] == "rate_limit_exceeded"
    for _, _, payload, _ in ok:
        assert payload["usage"]["completion_tokens"] == 200 and payload["choices"][0]["finish_reason"] == "length"
    # refused at once: every 429 came back before the first admitted request finished
    assert max(r[3] for r in refused) < min(r[3] for r in ok)
    after = metrics(small_server.url)
    assert metric(after, "tideflow:request_rejected_total") - metric(before, "tideflow:request_rejected_total") == 16


async def _kill_engine_mid_stream(url: str, kill) -> tuple[list[str], tuple, tuple]:
    """Start a stream and a whole request, kill the engine once the stream has begun, and
    return the stream's events, the whole request's (status, body), then /health's."""
    body = {"prompt": "def main():", "max_tokens": 900, "ignore_eos": True}
    async with aiohttp.ClientSession() as session:
        whole = asyncio.ensure_future(session.post(f"{url}/v1/completions", json=body))
        async with session.post(f"{url}/v1/completions", json={**body, "stream": True}) as resp:
            assert resp.status == 200
            events = [(await resp.content.readline()).decode().strip()]
            await asyncio.to_thread(kill)
            async for line in resp.content:
                if line.strip():
                    events.append(line.decode().strip())
        async with await whole as resp:
            whole_result = resp.status, await resp.json()
        async with session.get(f"{url}/health") as resp:
            health = resp.status, await resp.json()
    return events, whole_result, health


def test_a_dead_stage_fails_requests_explicitly_then_the_replica_is_replaced(small_server, ray_session):
    """Last on this server: it loses its engine."""
    from tideflow.runtime.dataflow.executor import NAMESPACE

    with urllib.request.urlopen(f"{small_server.url}/health", timeout=30) as resp:
        graph = json.loads(resp.read())["graph"]
    engine = ray_session.get_actor(f"{graph}/engine/0", namespace=NAMESPACE)
    events, (status, payload), health = run(_kill_engine_mid_stream(small_server.url, lambda: ray_session.kill(engine)))
    # the stream ends with an error event, never with a finish_reason: no silently truncated success
    chunks = [json.loads(e.removeprefix("data: ")) for e in events if e != "data: [DONE]"]
    assert "error" in chunks[-1] and chunks[-1]["error"]["type"] == "server_error"
    assert all(c["finish_reason"] is None for chunk in chunks[:-1] for c in chunk["choices"])
    assert len(chunks) >= 2  # it had streamed before the failure
    # the request in flight gets a 503 error object, not a 200
    assert status == 503 and payload["error"]["code"] == "service_unavailable"
    assert health[0] == 503 and "engine" in health[1]["error"]["message"]
    # and new requests fail fast
    req = urllib.request.Request(f"{small_server.url}/v1/completions", data=b'{"prompt": "hi", "max_tokens": 4}',
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 503 and json.loads(err.value.read())["error"]["code"] == "service_unavailable"
    # Serve's health checks fail, it replaces the replica, and the new one deploys a new graph
    fresh = _wait_for_health(small_server.url, timeout=180)
    assert fresh != graph
    body = json.dumps({"prompt": "def f(x):", "max_tokens": 4, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"{small_server.url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert json.loads(resp.read())["usage"]["completion_tokens"] == 4


def _wait_for_health(url: str, timeout: float) -> str:
    """Poll /health until it answers 200; return the graph it names. (The server's state is
    remote: there is no event to wait on.)"""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
                return json.loads(resp.read())["graph"]
        except (urllib.error.URLError, OSError):  # 503 (HTTPError), or no replica yet
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)
