"""A circuit breaker per graph (each Serve replica owns one graph, and one breaker): while the
graph is too slow or failing, new generation requests are shed at once with a 503 and
Retry-After instead of joining a queue they would time out in.

It judges the requests of a sliding window (`BreakerConfig.window_s`) once it holds
`min_requests` of them, and opens when either
- more than half of them waited longer than `ttft_s` for their first output (the median wait
  is over the threshold). The wait runs from admission at the replica to the graph's first
  delta: the graph's queues, the slow stage and prefill all show in it. A request still
  waiting past `ttft_s` counts as slow at once, so a graph that stalls completely opens the
  breaker too, without any request finishing; or
- more than `error_rate` of those that finished failed inside the graph (5xx; client
  mistakes never reach it).

Open, it sheds for `open_s`, then half-opens: the next request goes through as the probe and
the others are still shed. A probe whose first output comes within `ttft_s` (or at all, for an
errors-only breaker) closes the breaker with an empty window; a slow or failed probe opens it
for another `open_s`, and so does one that shows nothing within its time (`ttft_s`, else
`open_s`). A probe whose client left before it showed anything frees the probe's place.

Each request holds a `Ticket` through which the server reports its outcome. A ticket belongs
to the breaker's epoch, which changes at each opening and closing: a request admitted before
a change says nothing about the graph after it. The clock is injectable so tests step time
instead of sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tideflow.serve.admission import is_generation
from tideflow.serve.config_sections import section_from_value
from tideflow.serve.errors import send_error, shed

TICKET = "tideflow_breaker_ticket"  # scope["state"] key: the request's Ticket
CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"


@dataclass(frozen=True)
class BreakerConfig:
    # open when more than half the window's requests waited longer than this (seconds) for their
    # first output; None: latency never opens it
    ttft_s: float | None = None
    # open when more than this fraction (0 < r < 1) of the window's finished requests failed in the
    # graph; None: errors never open it
    error_rate: float | None = None
    window_s: float = 30.0  # seconds of requests judged
    min_requests: int = 10  # requests the window needs before a threshold is judged
    open_s: float = 10.0  # seconds shed (the 503s' Retry-After) before one probe goes through

    def __post_init__(self):
        if self.ttft_s is not None and not _positive(self.ttft_s):
            raise ValueError(f"breaker.ttft_s must be a positive number of seconds (or unset), got {self.ttft_s!r}")
        rate = self.error_rate
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1):
            raise ValueError(f"breaker.error_rate must be a fraction in (0, 1) (or unset), got {rate!r}")
        for name in ("window_s", "open_s"):
            if not _positive(getattr(self, name)):
                raise ValueError(f"breaker.{name} must be a positive number of seconds, got {getattr(self, name)!r}")
        low = self.min_requests
        if isinstance(low, bool) or not isinstance(low, int) or low < 1:
            raise ValueError(f"breaker.min_requests must be an integer >= 1, got {low!r}")

    @property
    def active(self) -> bool:
        """Whether any threshold is set (else no breaker is built)."""
        return self.ttft_s is not None or self.error_rate is not None

    @classmethod
    def from_value(cls, value) -> BreakerConfig:
        """From a BreakerConfig or a mapping of its fields (a Serve config's `breaker:`)."""
        return section_from_value(cls, value, "breaker", "setting", _number)


def _positive(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < float("inf")


def _number(value):
    """Strings of numbers (`serve run` key=value args) as numbers; the rest as given."""
    if isinstance(value, str):
        try:
            return int(value) if value.strip().isdigit() else float(value)
        except ValueError:
            return value  # __post_init__ names the setting
    return value


class Ticket:
    """One request's place in the breaker; the server reports its outcome through it."""

    __slots__ = ("breaker", "start", "epoch", "probe", "shown", "ended", "counted")

    def __init__(self, breaker: CircuitBreaker | None, start: float, epoch: int, probe: bool):
        self.breaker = breaker  # None: no breaker, every call does nothing
        self.start = start  # clock time of admission
        self.epoch = epoch
        self.probe = probe  # the half-open breaker's one request through
        self.shown = False  # its first output came
        self.ended = False  # finished, or its client left
        self.counted = False  # counted as slow while still waiting

    def first_output(self) -> None:
        """The graph's first delta for the request arrived (called for every delta; the first counts)."""
        if self.breaker is not None and not self.shown:
            self.shown = True
            self.breaker._first_output(self)

    def finished(self, failed: bool) -> None:
        """The request ended: completed, or failed inside the graph."""
        if self.breaker is not None and not self.ended:
            self.ended = True
            self.breaker._finished(self, failed)

    def done(self) -> None:
        """The response is over, whatever happened (a client that left included)."""
        if self.breaker is not None:
            self.ended = True
            self.breaker._done(self)


NO_TICKET = Ticket(None, 0.0, 0, False)  # a request without a breaker


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self._state = CLOSED
        self._epoch = 0
        self._opened_at = 0.0
        self._probe: Ticket | None = None
        self._waits: deque[tuple[float, bool]] = deque()  # (clock time, slow) per first output in the window
        self._slow = 0  # slow entries of _waits
        self._ends: deque[tuple[float, bool]] = deque()  # (clock time, failed) per finished request in the window
        self._failed = 0  # failed entries of _ends
        self._waiting: deque[Ticket] = deque()  # admitted, no first output yet, oldest first (ttft_s set)

    @property
    def state(self) -> str:
        """closed | half_open | open (an open breaker whose time is up reads half_open)."""
        if self._state == OPEN and self.clock() - self._opened_at >= self.config.open_s:
            return HALF_OPEN
        return self._state

    def admit(self) -> Ticket | float:
        """A ticket for a request that may go, else the seconds until the breaker may let one through."""
        now, config = self.clock(), self.config
        if self._state == OPEN:
            left = self._opened_at + config.open_s - now
            if left > 0:
                return left
            self._enter(HALF_OPEN, now)
        if self._state == HALF_OPEN:
            probe = self._probe
            if probe is None:
                self._probe = Ticket(self, now, self._epoch, probe=True)
                return self._probe
            overdue = probe.start + (config.ttft_s or config.open_s) - now
            if overdue > 0:
                return overdue
            self._enter(OPEN, now)  # the probe showed nothing in its time
            return config.open_s
        self._judge(now)
        if self._state == OPEN:
            return config.open_s
        ticket = Ticket(self, now, self._epoch, probe=False)
        if config.ttft_s is not None:
            self._waiting.append(ticket)
        return ticket

    # -- outcomes (through tickets) --------------------------------------------------------------
    def _first_output(self, ticket: Ticket) -> None:
        if ticket.epoch != self._epoch:
            return
        now, ttft = self.clock(), self.config.ttft_s
        slow = ttft is not None and now - ticket.start > ttft
        if ticket.probe:
            self._enter(OPEN if slow else CLOSED, now)
            return
        if ttft is not None and not ticket.counted:
            self._add_wait(now, slow)
        self._judge(now)

    def _finished(self, ticket: Ticket, failed: bool) -> None:
        if ticket.epoch != self._epoch:
            return
        now = self.clock()
        if ticket.probe:  # one that showed output was judged then, in an epoch now over
            self._enter(OPEN if failed else CLOSED, now)
            return
        if self.config.error_rate is not None:
            self._ends.append((now, failed))
            self._failed += failed
        self._judge(now)

    def _done(self, ticket: Ticket) -> None:
        if ticket.probe and ticket is self._probe and ticket.epoch == self._epoch:
            self._probe = None  # left before it said anything: the next request probes

    # -- state ---------------------------------------------------------------------------------
    def _add_wait(self, now: float, slow: bool) -> None:
        self._waits.append((now, slow))
        self._slow += slow

    def _judge(self, now: float) -> None:
        """Count overdue waits as slow, drop what left the window, open past a threshold."""
        config = self.config
        if self._state != CLOSED:
            return
        waiting = self._waiting
        while waiting and (waiting[0].shown or waiting[0].ended or now - waiting[0].start > config.ttft_s):
            ticket = waiting.popleft()
            if not ticket.shown and not ticket.ended:
                ticket.counted = True
                self._add_wait(now, True)
        horizon = now - config.window_s
        while self._waits and self._waits[0][0] < horizon:
            self._slow -= self._waits.popleft()[1]
        while self._ends and self._ends[0][0] < horizon:
            self._failed -= self._ends.popleft()[1]
        waits, ends = len(self._waits), len(self._ends)
        if waits >= config.min_requests and 2 * self._slow > waits:
            self._enter(OPEN, now)
        elif config.error_rate is not None and ends >= config.min_requests and self._failed > config.error_rate * ends:
            self._enter(OPEN, now)

    def _enter(self, state: str, now: float) -> None:
        """A new epoch in `state`, with an empty window."""
        self._state = state
        self._epoch += 1
        self._probe = None
        if state == OPEN:
            self._opened_at = now
        self._waits.clear()
        self._ends.clear()
        self._waiting.clear()
        self._slow = self._failed = 0


class BreakerMiddleware:
    """Wraps the app: generation requests get a ticket, or a 503 while the breaker sheds."""

    def __init__(self, app, breaker: CircuitBreaker, on_shed: Callable[[], None]):
        self.app = app
        self.breaker = breaker
        self.on_shed = on_shed

    async def __call__(self, scope, receive, send):
        if not is_generation(scope):
            return await self.app(scope, receive, send)
        ticket = self.breaker.admit()
        if not isinstance(ticket, Ticket):
            self.on_shed()
            return await send_error(send, shed(ticket))
        scope.setdefault("state", {})[TICKET] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            ticket.done()
