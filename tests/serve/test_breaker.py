"""The circuit breaker (issue 21): it opens under an injected slow stage and closes after the
stage recovers, on a Ray-free stand-in server whose graph takes time from a stepped clock;
and, on the breaker alone, each way it opens, probes and closes."""

from __future__ import annotations

import asyncio

import pytest

from tests.serve.stand_in import Clock, ask, call, stand_in_server
from tideflow import LLM
from tideflow.serve.breaker import CLOSED, HALF_OPEN, OPEN, BreakerConfig, CircuitBreaker, Ticket
from tideflow.serve.config import ServeConfig
from tideflow.serve.server import build_asgi_app

GOOD = {"prompt": "def fibonacci(n):", "max_tokens": 2, "temperature": 0}


class SlowHandle:
    """The stand-in graph behind a stage that takes `delay` seconds of the clock per request,
    or fails every request while `failing`."""

    def __init__(self, inner, clock: Clock):
        self.inner = inner
        self.clock = clock
        self.delay = 0.0
        self.failing = False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def submit_deltas(self, prompt: dict, params):
        self.clock.advance(self.delay)
        if self.failing:
            raise RuntimeError("the stage raised")
        async for delta in self.inner.submit_deltas(prompt, params):
            yield delta


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir("llama"), dtype="float32")


def _served(tiny_model_dir, llm, **breaker):
    clock = Clock()
    server = stand_in_server(tiny_model_dir("llama"), ServeConfig(breaker=breaker), clock, llm)
    slow = server.handle = SlowHandle(server.handle, clock)
    return build_asgi_app(server), clock, slow


def _metric(app, name: str) -> float:
    line = next(l for l in call(app, "GET", "/metrics")[1].splitlines() if l.startswith(name))
    return float(line.rsplit(" ", 1)[1])


def test_opens_under_a_slow_stage_and_closes_after_it_recovers(tiny_model_dir, llm):
    app, clock, stage = _served(tiny_model_dir, llm, ttft_s=1.0, min_requests=3, open_s=5.0)
    assert [call(app, "POST", "/v1/completions", GOOD)[0] for _ in range(2)] == [200, 200]
    stage.delay = 2.0  # each request now waits 2 s for its first output
    # slow requests still complete; the third slow one tips the window (3 of 5 slow)
    assert [call(app, "POST", "/v1/completions", GOOD)[0] for _ in range(3)] == [200, 200, 200]
    status, error = call(app, "POST", "/v1/completions", GOOD)
    assert status == 503
    assert (error["error"]["type"], error["error"]["code"]) == ("server_error", "service_unavailable")
    assert _metric(app, "tideflow:circuit_breaker_state") == 2
    assert _metric(app, "tideflow:request_shed_total") == 1
    assert call(app, "GET", "/health")[0] == 200  # the replica is alive: Serve must not replace it
    assert call(app, "GET", "/v1/models")[0] == 200  # only generation is shed

    stage.delay = 0.0  # the stage recovers
    clock.advance(5.0)
    assert _metric(app, "tideflow:circuit_breaker_state") == 1  # half-open: the next request probes
    assert call(app, "POST", "/v1/completions", GOOD)[0] == 200
    assert _metric(app, "tideflow:circuit_breaker_state") == 0
    assert [call(app, "POST", "/v1/chat/completions", {**GOOD, "messages": [{"role": "user", "content": "hi"}]})[0]
            for _ in range(3)] == [200, 200, 200]


def test_the_503_says_when_to_retry_and_a_slow_probe_reopens(tiny_model_dir, llm):
    app, clock, stage = _served(tiny_model_dir, llm, ttft_s=1.0, min_requests=2, open_s=8.0)
    stage.delay = 3.0
    call(app, "POST", "/v1/completions", GOOD)
    call(app, "POST", "/v1/completions", GOOD)  # opened at this clock time
    clock.advance(2.5)
    shed = asyncio.run(ask(app, "POST", "/v1/completions", GOOD))
    assert shed.status == 503 and shed.headers["retry-after"] == "6" and shed.headers["retry-after-ms"] == "5500"
    clock.advance(5.5)
    assert call(app, "POST", "/v1/completions", GOOD)[0] == 200  # the probe: slow, so open again
    assert call(app, "POST", "/v1/completions", GOOD)[0] == 503


def test_failures_in_the_graph_open_it(tiny_model_dir, llm):
    app, clock, stage = _served(tiny_model_dir, llm, error_rate=0.5, min_requests=4, open_s=5.0)
    stage.failing = True
    statuses = [call(app, "POST", "/v1/completions", GOOD)[0] for _ in range(5)]
    assert statuses == [500, 500, 500, 500, 503]
    stage.failing = False
    clock.advance(5.0)
    assert [call(app, "POST", "/v1/completions", GOOD)[0] for _ in range(2)] == [200, 200]


def test_client_mistakes_do_not_count(tiny_model_dir, llm):
    app, _, _ = _served(tiny_model_dir, llm, error_rate=0.1, min_requests=2)
    assert [call(app, "POST", "/v1/completions", {**GOOD, "max_tokens": 0})[0] for _ in range(5)] == [400] * 5
    assert call(app, "POST", "/v1/completions", GOOD)[0] == 200


# -- the breaker alone -------------------------------------------------------------------------
def _breaker(**config) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerConfig(**config), clock), clock


def _request(breaker: CircuitBreaker, clock: Clock, wait: float, failed: bool = False) -> Ticket:
    ticket = breaker.admit()
    assert isinstance(ticket, Ticket), f"shed: {ticket}"
    clock.advance(wait)
    if not failed:
        ticket.first_output()
    ticket.finished(failed)
    ticket.done()
    return ticket


def test_more_than_half_slow_opens_and_fewer_does_not():
    breaker, clock = _breaker(ttft_s=1.0, min_requests=4)
    for wait in (2.0, 0.1, 2.0, 0.1, 0.1):  # 2 of 5 slow: the median is fast
        _request(breaker, clock, wait)
    assert breaker.state == CLOSED
    for wait in (2.0, 2.0):  # 4 of 7
        _request(breaker, clock, wait)
    assert breaker.state == OPEN


def test_too_few_requests_are_not_judged_and_old_ones_leave_the_window():
    breaker, clock = _breaker(ttft_s=1.0, min_requests=3, window_s=10.0)
    _request(breaker, clock, 5.0)
    _request(breaker, clock, 5.0)
    assert breaker.state == CLOSED  # 2 < min_requests
    clock.advance(11.0)  # both slow ones are out of the window
    _request(breaker, clock, 0.1)
    _request(breaker, clock, 0.1)
    _request(breaker, clock, 5.0)  # 1 of 3 slow
    assert breaker.state == CLOSED


def test_a_stalled_graph_opens_it_without_any_request_finishing():
    breaker, clock = _breaker(ttft_s=1.0, min_requests=3)
    stuck = [breaker.admit() for _ in range(3)]
    assert all(isinstance(t, Ticket) for t in stuck)
    clock.advance(1.5)  # all three have waited past ttft_s, none showed anything
    assert not isinstance(breaker.admit(), Ticket) and breaker.state == OPEN
    for t in stuck:  # their late outputs belong to the closed epoch and change nothing
        t.first_output()
        t.finished(False)
    assert breaker.state == OPEN


def test_a_request_whose_client_left_is_not_counted_slow():
    breaker, clock = _breaker(ttft_s=1.0, min_requests=2)
    for _ in range(3):
        breaker.admit().done()  # gone before any output
    clock.advance(5.0)
    assert isinstance(breaker.admit(), Ticket) and breaker.state == CLOSED


def test_half_open_lets_one_probe_through():
    breaker, clock = _breaker(ttft_s=1.0, min_requests=1, open_s=10.0)
    _request(breaker, clock, 2.0)
    assert breaker.state == OPEN
    clock.advance(9.0)
    assert breaker.admit() == pytest.approx(1.0)  # seconds left
    clock.advance(1.0)
    probe = breaker.admit()
    assert isinstance(probe, Ticket) and probe.probe and breaker.state == HALF_OPEN
    assert not isinstance(breaker.admit(), Ticket)  # the others wait for the probe
    clock.advance(0.2)
    probe.first_output()
    assert breaker.state == CLOSED and isinstance(breaker.admit(), Ticket)


def test_a_probe_that_fails_or_shows_nothing_in_time_reopens_and_one_that_left_frees_its_place():
    breaker, clock = _breaker(ttft_s=1.0, min_requests=1, open_s=10.0)
    _request(breaker, clock, 2.0)
    clock.advance(10.0)
    breaker.admit().finished(failed=True)  # the probe failed
    assert breaker.state == OPEN
    clock.advance(10.0)
    breaker.admit()  # a probe that hangs
    clock.advance(1.5)
    assert breaker.admit() == pytest.approx(10.0) and breaker.state == OPEN  # overdue: open again
    clock.advance(10.0)
    breaker.admit().done()  # the probe's client left
    assert breaker.admit().probe  # the next request probes at once


def test_error_rate_breaker_closes_on_a_probe_that_answers():
    breaker, clock = _breaker(error_rate=0.5, min_requests=2, open_s=3.0)
    _request(breaker, clock, 0.1, failed=True)
    _request(breaker, clock, 0.1, failed=True)
    assert breaker.state == OPEN
    clock.advance(3.0)
    probe = breaker.admit()
    clock.advance(30.0)  # no latency threshold: a slow answer is still an answer
    probe.first_output()
    assert breaker.state == CLOSED


def test_breaker_config_is_checked():
    assert not BreakerConfig().active and BreakerConfig(ttft_s=2).active
    assert ServeConfig.from_args({"breaker": {"ttft_s": "2.5", "min_requests": "5"}}).breaker == \
        BreakerConfig(ttft_s=2.5, min_requests=5)
    for bad, needle in [({"ttft": 1}, "unknown setting"), ({"error_rate": 1.5}, "error_rate must be"),
                        ({"ttft_s": 0}, "ttft_s must be"), ({"min_requests": 0}, "min_requests must be"),
                        ({"open_s": "soon"}, "open_s must be"), ([1], "must be a mapping")]:
        with pytest.raises(ValueError, match=needle):
            ServeConfig.from_args({"breaker": bad})
