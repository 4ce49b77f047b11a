"""`/metrics` moves as requests complete; abandoned streams are aborted and free their KV
blocks; `/health` and `/v1/models` answer."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import aiohttp

from .conftest import metric, metrics, run, wait_until

HISTOGRAMS = ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
              "request_queue_time_seconds")
GAUGES = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_metrics_move_as_requests_complete(server):
    before = metrics(server.url)
    for name in GAUGES:
        assert f'tideflow:{name}{{model_name="llama"}}' in before
    a = _post(f"{server.url}/v1/completions", {"prompt": "class Queue:", "max_tokens": 7, "temperature": 0,
                                               "ignore_eos": True})
    b = _post(f"{server.url}/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}],
                                                    "max_tokens": 5, "ignore_eos": True})
    after = metrics(server.url)

    def delta(name):
        return metric(after, f"tideflow:{name}") - metric(before, f"tideflow:{name}")

    assert delta("prompt_tokens_total") == a["usage"]["prompt_tokens"] + b["usage"]["prompt_tokens"]
    assert delta("generation_tokens_total") == 12
    for name in HISTOGRAMS:
        assert delta(f"{name}_count") >= (2 if name != "inter_token_latency_seconds" else 0), name
        assert delta(f"{name}_sum") >= 0
    assert delta("time_to_first_token_seconds_count") == delta("e2e_request_latency_seconds_count") == 2
    assert delta("inter_token_latency_seconds_count") == (7 - 1) + (5 - 1)
    assert delta("prefix_cache_queries_total") > 0
    assert metric(after, "tideflow:request_success_total") - metric(before, "tideflow:request_success_total") == 2
    assert metric(after, "tideflow:kv_cache_usage_perc") == 0.0  # nothing left running


def test_health_and_models(server):
    with urllib.request.urlopen(f"{server.url}/health", timeout=30) as resp:
        assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
    with urllib.request.urlopen(f"{server.url}/v1/models", timeout=30) as resp:
        models = json.loads(resp.read())
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["llama"]
    assert models["data"][0]["max_model_len"] == 1024


async def _abandon_streams(url: str, count: int) -> tuple[dict, list[str]]:
    """Open `count` long streams, read a little of each, sample the metrics while they run,
    then drop the connections."""
    body = {"prompt": "def main():", "max_tokens": 900, "ignore_eos": True, "stream": True}
    session = aiohttp.ClientSession()
    firsts = []
    try:
        responses = await asyncio.gather(*[session.post(f"{url}/v1/completions", json=body) for _ in range(count)])
        for resp in responses:
            assert resp.status == 200
            line = b""
            while not line.startswith(b"data: {"):
                line = await resp.content.readline()
            firsts.append(line.decode())
        while_running = await asyncio.to_thread(metrics, url)
        for resp in responses:
            resp.close()  # the client goes away mid-stream
    finally:
        await session.close()
    return while_running, firsts


def test_abandoned_streams_are_aborted_and_free_their_kv_blocks(server):
    baseline = metrics(server.url)
    assert metric(baseline, "tideflow:kv_cache_usage_perc") == 0.0
    while_running, firsts = run(_abandon_streams(server.url, 4))
    assert len(firsts) == 4
    assert metric(while_running, "tideflow:kv_cache_usage_perc") > 0.0
    held = [metric(while_running, f"tideflow:num_requests_{state}") for state in ("running", "waiting")]
    assert sum(held) > 0

    def released():
        now = metrics(server.url)
        idle = (metric(now, "tideflow:kv_cache_usage_perc"), metric(now, "tideflow:num_requests_running"),
                metric(now, "tideflow:num_requests_waiting")) == (0.0, 0.0, 0.0)
        return idle and now

    after = wait_until(released, timeout=30)
    # aborted, not run to the end: far fewer than 4 x 900 tokens were generated
    generated = metric(after, "tideflow:generation_tokens_total") - metric(baseline, "tideflow:generation_tokens_total")
    assert generated < 4 * 900 / 2
    # and a new request completes promptly
    out = _post(f"{server.url}/v1/completions", {"prompt": "x", "max_tokens": 3, "ignore_eos": True})
    assert out["usage"]["completion_tokens"] == 3
