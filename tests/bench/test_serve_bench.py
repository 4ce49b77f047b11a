"""`tideflow bench serve`: the metric functions on hand-built records (expected values derived
here from docs/benchmarks.md's definitions), the arrival schedule and the SSE reader against a fake
server. The end-to-end run against a live server is `tests/serve/test_bench_serve_live.py`,
on the server the serve tests share (each Serve app costs a graph deploy)."""

from __future__ import annotations

import asyncio
import json
import math
import threading

import numpy as np
import pytest

from tideflow.bench import serve as bench_serve
from tideflow.bench.serve_client import Target, arrival_offsets, carries_tokens, run_requests, split_events
from tideflow.bench.serve_metrics import compute_metrics, latencies, meets_slos, parse_goodput, summarize
from tideflow.bench.serve_record import RequestRecord


def record(send: float, chunks: list[float], tokens: int | None = None, prompt: int = 10, error: str | None = None):
    return RequestRecord(prompt_len=prompt, max_tokens=tokens or len(chunks), send_time=send, chunk_times=chunks,
                         output_tokens=len(chunks) if tokens is None else tokens, error=error)


# -- metrics --------------------------------------------------------------------------------------
def test_latencies_of_one_request():
    r = record(10.0, [10.2, 10.25, 10.35, 10.4])
    lat = latencies(r)
    assert lat.ttft == pytest.approx(0.2)  # first chunk - send
    assert lat.e2el == pytest.approx(0.4)  # last chunk - send
    assert lat.tpot == pytest.approx((0.4 - 0.2) / (4 - 1))
    assert lat.itl == pytest.approx([0.05, 0.10, 0.05])


def test_tpot_uses_the_token_count_not_the_chunk_count():
    # 2 chunks carrying 5 tokens: TPOT spreads E2EL - TTFT over the 4 tokens after the first
    lat = latencies(record(0.0, [0.1, 0.5], tokens=5))
    assert lat.tpot == pytest.approx(0.4 / 4)
    assert lat.itl == pytest.approx([0.4])
    assert latencies(record(0.0, [0.3])).tpot is None  # a single token has no TPOT


def test_summarize_mean_median_and_linear_percentiles():
    stats = summarize([0.001, 0.002, 0.003, 0.004])  # 1..4 ms
    # order statistics at rank q/100 * (n - 1), interpolated linearly
    assert stats == pytest.approx({"mean": 2.5, "median": 2.5, "p90": 1 + 0.9 * 3, "p99": 1 + 0.99 * 3})
    assert summarize([]) == {"mean": None, "median": None, "p90": None, "p99": None}


def test_compute_metrics_counts_failures_and_pools_itl():
    records = [
        record(0.0, [0.1, 0.2, 0.4], prompt=10),  # TTFT 100, TPOT 150, ITL 100 200
        record(0.5, [0.8], prompt=20),  # TTFT 300, one token: no TPOT, no ITL
        record(1.0, [], prompt=30, error="HTTP 429: too many requests"),
        record(1.0, [], prompt=40, error="stream error: boom"),
    ]
    m = compute_metrics(records, duration_s=2.0)
    assert (m["completed"], m["failed"]) == (2, 2)
    assert m["first_error"] == "HTTP 429: too many requests"
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (30, 4)  # completed requests only
    assert m["request_throughput"] == pytest.approx(2 / 2.0)
    assert m["output_throughput"] == pytest.approx(4 / 2.0)
    assert m["total_token_throughput"] == pytest.approx(34 / 2.0)
    assert m["mean_ttft_ms"] == pytest.approx(200.0) and m["median_ttft_ms"] == pytest.approx(200.0)
    assert m["p99_ttft_ms"] == pytest.approx(100 + 0.99 * 200)
    assert m["mean_tpot_ms"] == pytest.approx(150.0)  # only the multi-token request
    assert m["mean_itl_ms"] == pytest.approx(150.0) and m["p90_itl_ms"] == pytest.approx(100 + 0.9 * 100)
    assert m["mean_e2el_ms"] == pytest.approx((400 + 300) / 2)
    assert m["goodput"] is None  # no SLOs given


def test_goodput_counts_requests_meeting_every_slo():
    records = [
        record(0.0, [0.1, 0.2, 0.3]),  # TTFT 100, TPOT 100, E2EL 300: good
        record(0.0, [0.6, 0.7]),  # TTFT 600: misses the TTFT SLO
        record(0.0, [0.1, 0.5]),  # TPOT 400: misses the TPOT SLO
        record(0.0, [0.2]),  # one token: no TPOT to miss; TTFT 200: good
        record(0.0, [], error="boom"),  # failed: never good
    ]
    slos = parse_goodput(["ttft:500", "tpot:150"])
    assert compute_metrics(records, duration_s=4.0, slos_ms=slos)["goodput"] == pytest.approx(2 / 4.0)
    assert meets_slos(latencies(records[0]), {"e2el": 300.0})  # the bound itself meets it
    assert not meets_slos(latencies(records[0]), {"e2el": 299.0})


def test_parse_goodput():
    assert parse_goodput(["ttft:500", "TPOT:50.5", "e2el:2000"]) == {"ttft": 500.0, "tpot": 50.5, "e2el": 2000.0}
    assert parse_goodput([]) == {}
    for bad in ("ttft", "ttft:", "ttft:abc", "ttft:-5", "ttft:0", "ttft:inf", "itl:50", "latency:5"):
        with pytest.raises(ValueError, match=rf"--goodput: expected NAME:MS .* got '{bad}'"):
            parse_goodput([bad])
    with pytest.raises(ValueError, match="ttft is given twice"):
        parse_goodput(["ttft:1", "ttft:2"])


def test_bad_goodput_on_the_command_line_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_serve.main(["--url", "http://127.0.0.1:1", "--goodput", "ttft:fast"])
    assert exc.value.code == 2
    assert "--goodput: expected NAME:MS" in capsys.readouterr().err


# -- arrivals -------------------------------------------------------------------------------------
def test_arrivals_are_seeded_and_start_at_zero():
    a = arrival_offsets(50, rate=4.0, burstiness=1.0, seed=7)
    assert a[0] == 0.0 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, arrival_offsets(50, rate=4.0, burstiness=1.0, seed=7))
    assert not np.array_equal(a, arrival_offsets(50, rate=4.0, burstiness=1.0, seed=8))


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 4.0])
def test_arrival_gaps_have_mean_one_over_rate_and_gamma_spread(burstiness):
    gaps = np.diff(arrival_offsets(40_001, rate=8.0, burstiness=burstiness, seed=0))
    assert gaps.mean() == pytest.approx(1 / 8.0, rel=0.03)
    # gamma with shape k: coefficient of variation 1 / sqrt(k) (1 for Poisson)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


def test_infinite_rate_sends_everything_at_once_and_bad_values_raise():
    assert np.array_equal(arrival_offsets(5, rate=math.inf), np.zeros(5))
    assert len(arrival_offsets(0, rate=2.0)) == 0
    for rate, burstiness in ((0.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (1.0, 0.0), (1.0, math.inf)):
        with pytest.raises(ValueError):
            arrival_offsets(3, rate=rate, burstiness=burstiness)


# -- reading streams ------------------------------------------------------------------------------
def test_split_events_keeps_the_incomplete_rest():
    events, rest = split_events(b'data: {"a": 1}\n\ndata: [DONE]\n\ndata: {"b"')
    assert events == ['{"a": 1}', "[DONE]"] and rest == b'data: {"b"'
    events, rest = split_events(rest + b": 2}\r\n\r\n")
    assert events == ['{"b": 2}'] and rest == b""


def test_chat_opening_chunk_and_usage_chunk_carry_no_tokens():
    assert not carries_tokens("chat", {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    assert carries_tokens("chat", {"choices": [{"index": 0, "delta": {"content": "hi"}}]})
    assert carries_tokens("completions", {"choices": [{"index": 0, "text": ""}]})  # tokens whose text is pending
    assert not carries_tokens("completions", {"choices": [], "usage": {"completion_tokens": 3}})


@pytest.fixture(scope="module")
def fake_server():
    """An aiohttp server whose /v1/completions answers by prompt: "ok" streams 3 tokens in 2
    chunks then the usage, "bad" is a 400, "err" streams an error event, "cut" stops early."""
    from aiohttp import web

    def event(obj) -> bytes:
        return f"data: {json.dumps(obj)}\n\n".encode()

    async def completions(request):
        prompt = (await request.json())["prompt"]
        if prompt == "bad":
            return web.json_response({"error": {"message": "max_tokens is too large"}}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if prompt == "err":
            await resp.write(event({"error": {"message": "the graph died"}}) + b"data: [DONE]\n\n")
        else:
            await resp.write(event({"choices": [{"index": 0, "text": "a"}], "usage": None}))
            await asyncio.sleep(0.05)
            await resp.write(event({"choices": [{"index": 0, "text": "bc", "finish_reason": "length"}], "usage": None}))
            if prompt == "ok":
                await resp.write(event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}))
                await resp.write(b"data: [DONE]\n\n")
        return resp

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_client_records_chunks_usage_and_every_kind_of_failure(fake_server):
    prompts = ["ok", "bad", "err", "cut"]
    records, duration = run_requests(Target(fake_server, "completions", "m"), prompts, [3] * 4, [1] * 4,
                                     np.zeros(4), max_concurrency=2, timeout_s=30)
    ok, bad, err, cut = records
    assert ok.ok and len(ok.chunk_times) == 2 and (ok.output_tokens, ok.prompt_len) == (3, 7)
    assert ok.chunk_times[1] - ok.chunk_times[0] >= 0.04 and ok.chunk_times[0] > ok.send_time
    assert bad.error == "HTTP 400: max_tokens is too large"
    assert err.error == "stream error: the graph died"
    assert cut.error == "the stream ended before data: [DONE]"
    m = compute_metrics(records, duration)
    assert (m["completed"], m["failed"], m["first_error"]) == (1, 3, bad.error)
