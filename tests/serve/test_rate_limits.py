"""Per-key limits (issue 21) on a Ray-free stand-in server with a stepped clock: a burst over a
key's requests per minute gets 429s with Retry-After while another key goes on; tokens per
minute reserve prompt + max_tokens and give back what was not generated; a key's requests in
flight are bounded; every generation response carries OpenAI's x-ratelimit-* headers."""

from __future__ import annotations

import asyncio

import pytest

from tests.serve.stand_in import Clock, ask, call, stand_in_server
from tideflow import LLM
from tideflow.serve.config import ServeConfig
from tideflow.serve.rate_limits import RateLimitConfig, TokenBucket, duration
from tideflow.serve.server import build_asgi_app

A, B = "sk-team-a", "sk-team-b"
PROMPT = [5, 6, 7, 8, 9]  # token ids: the prompt's size is known exactly
HOLD = 42  # a prompt starting with this token waits in the gated graph until released


class GatedHandle:
    """The stand-in graph, but a prompt starting with HOLD waits for `release` (and says it has
    entered), so a request can be held in flight without sleeping."""

    def __init__(self, inner):
        self.inner = inner
        self.entered: asyncio.Event | None = None
        self.release: asyncio.Event | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def submit_deltas(self, prompt: dict, params):
        if prompt["prompt_token_ids"][0] == HOLD:
            self.entered.set()
            await self.release.wait()
        async for delta in self.inner.submit_deltas(prompt, params):
            yield delta


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir("llama"), dtype="float32")


@pytest.fixture()
def make(tiny_model_dir, llm):
    """(limits, keys) -> (app, clock, server) over the shared LLM."""

    def build(limits: dict, keys=(A, B)):
        clock = Clock()
        config = ServeConfig(api_keys=keys, rate_limits=limits)
        server = stand_in_server(tiny_model_dir("llama"), config, clock, llm)
        return build_asgi_app(server), clock, server

    return build


def _completion(key: str | None, max_tokens: int = 2, prompt=PROMPT, **extra):
    headers = {"Authorization": f"Bearer {key}"} if key else None
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    return ("POST", "/v1/completions", body), headers


def _send(app, key: str | None, **kwargs):
    (method, path, body), headers = _completion(key, **kwargs)
    return asyncio.run(ask(app, method, path, body, headers=headers))


def test_a_burst_over_the_request_rate_gets_429s_while_another_key_goes_on(make):
    app, clock, _ = make({"requests_per_minute": 3})
    burst = [_send(app, A) for _ in range(5)]
    assert [r.status for r in burst] == [200, 200, 200, 429, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in burst] == ["2", "1", "0", "0", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "3" for r in burst)
    assert "x-ratelimit-limit-tokens" not in burst[0].headers  # no token limit set
    refused = burst[3]
    error = refused.body["error"]
    assert (error["type"], error["code"], error["param"]) == ("rate_limit_error", "rate_limit_exceeded", None)
    # a bucket of 3 per minute earns one request every 20 s
    assert (refused.headers["retry-after"], refused.headers["retry-after-ms"]) == ("20", "20000")
    assert refused.headers["x-ratelimit-reset-requests"] == "1m0s"
    other = _send(app, B)
    assert other.status == 200 and other.headers["x-ratelimit-remaining-requests"] == "2"
    clock.advance(19)
    assert _send(app, A).status == 429
    clock.advance(1)
    assert _send(app, A).status == 200


def test_every_request_counts_also_a_refused_one(make):
    """As OpenAI counts them: a 400 uses a request too, and carries the headers."""
    app, _, _ = make({"requests_per_minute": 2})
    bad = _send(app, A, max_tokens=0)
    assert bad.status == 400 and bad.headers["x-ratelimit-remaining-requests"] == "1"
    assert _send(app, A).status == 200
    assert _send(app, A).status == 429


def test_tokens_per_minute_reserve_prompt_and_max_tokens_and_return_the_rest(make):
    app, clock, _ = make({"tokens_per_minute": 100})
    # 5 prompt tokens + 90 that must all be generated: 95 used, 5 left
    full = _send(app, A, max_tokens=90, ignore_eos=True)
    assert full.status == 200 and full.body["usage"]["completion_tokens"] == 90
    assert full.headers["x-ratelimit-limit-tokens"] == "100"
    assert full.headers["x-ratelimit-remaining-tokens"] == "5"
    assert _send(app, B).status == 200  # the other key's bucket is full
    # 5 + 10 = 15 reserved > 5 left: 10 more tokens come in 6 s at 100 per minute
    refused = _send(app, A, max_tokens=10)
    assert refused.status == 429 and refused.headers["retry-after"] == "6"
    assert "tokens" in refused.body["error"]["message"]
    clock.advance(6)
    # now 15 are there; a request that stops early gives back what it did not generate
    early = _send(app, A, max_tokens=10, stop_token_ids=list(range(512)))
    assert early.status == 200
    used = 5 + early.body["usage"]["completion_tokens"]
    assert early.body["usage"]["completion_tokens"] < 10
    assert early.headers["x-ratelimit-remaining-tokens"] == str(15 - used)


def test_a_request_larger_than_the_token_limit_gets_no_retry_after(make):
    app, _, _ = make({"tokens_per_minute": 100})
    refused = _send(app, A, max_tokens=200)
    assert refused.status == 429 and "retry-after" not in refused.headers
    assert "too large" in refused.body["error"]["message"]
    # null max_tokens reserves the rest of the context (1024 tokens for the tiny model)
    assert _send(app, A, max_tokens=None).status == 429
    assert _send(app, A, max_tokens=20).status == 200  # nothing was taken by the refusals


def test_a_streamed_request_settles_its_tokens_when_it_ends(make):
    app, _, server = make({"tokens_per_minute": 1000})
    stream = _send(app, A, max_tokens=30, ignore_eos=True, stream=True)
    assert stream.status == 200 and stream.body.rstrip().endswith("data: [DONE]")
    # the headers left with the first chunk, before generation: the whole reservation
    assert stream.headers["x-ratelimit-remaining-tokens"] == str(1000 - 35)
    usage = server.limiter.usage(server.keys.match(A))
    assert round(usage.tokens.level) == 1000 - 35
    early = _send(app, A, max_tokens=30, stream=True, stop_token_ids=list(range(512)))
    assert early.status == 200
    assert 1000 - 70 < int(usage.tokens.level) < 1000 - 35  # most of the second reservation came back


def test_concurrent_requests_per_key(make):
    app, _, server = make({"concurrent_requests": 1})
    gated = server.handle = GatedHandle(server.handle)

    async def go():
        gated.entered, gated.release = asyncio.Event(), asyncio.Event()
        (m, p, held_body), a_headers = _completion(A, prompt=[HOLD, 5, 6])
        held = asyncio.create_task(ask(app, m, p, held_body, headers=a_headers))
        await gated.entered.wait()
        second = await ask(app, *_completion(A)[0], headers=a_headers)
        other = await ask(app, *_completion(B)[0], headers=_completion(B)[1])
        gated.release.set()
        first = await held
        after = await ask(app, *_completion(A)[0], headers=a_headers)
        return first, second, other, after

    first, second, other, after = asyncio.run(go())
    assert (first.status, second.status, other.status, after.status) == (200, 429, 200, 200)
    assert second.headers["retry-after"] == "1" and "in flight" in second.body["error"]["message"]


def test_without_keys_the_limits_bound_all_clients_together(make):
    app, _, _ = make({"requests_per_minute": 2}, keys=())
    assert [_send(app, None).status for _ in range(3)] == [200, 200, 429]


def test_refusals_are_counted_by_limit(make):
    app, _, _ = make({"requests_per_minute": 1, "tokens_per_minute": 50})
    _send(app, A)
    _send(app, A)  # requests
    _send(app, B, max_tokens=100)  # tokens
    text = call(app, "GET", "/metrics")[1]
    counts = {line.split('limit="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("tideflow:request_rate_limited_total")}
    assert counts == {"requests": 1.0, "tokens": 1.0}


def test_the_other_routes_are_not_limited(make):
    app, _, _ = make({"requests_per_minute": 1})
    headers = {"Authorization": f"Bearer {A}"}
    assert all(call(app, "GET", "/v1/models", headers=headers)[0] == 200 for _ in range(3))
    assert _send(app, A).status == 200


def test_bucket_and_durations():
    bucket = TokenBucket.full(60, now=0.0)
    assert bucket.take(60, 0.0) and not bucket.take(1, 0.0)
    assert bucket.wait_s(1, 0.0) == pytest.approx(1.0)
    assert bucket.take(1, 1.0) and not bucket.take(1, 1.0)
    bucket.give(1000, 1.0)
    assert bucket.level == 60  # never past its capacity
    assert [duration(s) for s in (0.0201, 1, 1.5, 60, 360, 75.25)] == ["21ms", "1s", "1.5s", "1m0s", "6m0s", "1m15.25s"]


def test_limit_config_is_checked():
    assert not RateLimitConfig().active
    assert ServeConfig.from_args({"rate_limits": {"requests_per_minute": "30"}}).rate_limits.requests_per_minute == 30
    for bad, needle in [({"rpm": 5}, "unknown limit"), ({"tokens_per_minute": 0}, "tokens_per_minute must be"),
                        ({"concurrent_requests": 1.5}, "concurrent_requests must be"), ("fast", "must be a mapping")]:
        with pytest.raises(ValueError, match=needle):
            ServeConfig.from_args({"rate_limits": bad})
