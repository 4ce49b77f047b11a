"""Per-key rate limits on the generation routes: requests per minute, tokens per minute and
requests in flight, each key with its own token buckets (`RateLimiter`), applied by
`RateLimitMiddleware`.

- Requests: each request takes one token from its key's request bucket as it arrives.
- Tokens: once the body is parsed (`OpenAIServer` calls `KeyUsage.reserve`), a request reserves
  its prompt tokens plus `max_tokens` for every sampled completion (the rest of the context when
  max_tokens is null), as OpenAI counts max_tokens against a key's tokens per minute at
  admission; when it ends, the tokens it did not generate go back (`Reservation.settle`). So a
  key never starts more than it could use, and the limit bounds the tokens really processed.
- Concurrency: requests of the key in flight (streams until their last chunk).

A bucket holds a minute's worth and refills continuously, so a key may burst up to its limit
and then goes at the limit's rate. Past a limit: 429 (`rate_limit_error`) with Retry-After
(and retry-after-ms) saying when the refused request would fit; a request that alone asks for
more tokens than the per-minute limit gets no Retry-After, as waiting cannot help. Every
response to a generation request carries OpenAI's headers: `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` (time until the bucket is full
again, as "1s", "6m0s") and the same for tokens, for the limits that are set.

Without API keys every client shares one bucket set: the limits then bound the whole replica.
Limits are per Serve replica (each keeps its own buckets): with N replicas a key may get up to
N times them. The clock is injectable so tests step time instead of sleeping.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from tideflow.serve.admission import is_generation
from tideflow.serve.auth import KEY_ID
from tideflow.serve.config_sections import section_from_value
from tideflow.serve.errors import rate_limited, send_error

LIMITS = "tideflow_limits"  # scope["state"] key: the request's KeyUsage
_EPS = 1e-9  # refills are float sums: a bucket this close to a whole token holds it


@dataclass(frozen=True)
class RateLimitConfig:
    """Per API key (and per Serve replica); None: no limit of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None  # prompt + max_tokens reserved at admission, unused tokens returned
    concurrent_requests: int | None = None  # requests in flight at once

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"rate_limits.{f.name} must be an integer >= 1 (or unset), got {value!r}")

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    @classmethod
    def from_value(cls, value) -> RateLimitConfig:
        """From a RateLimitConfig or a mapping of its fields (a Serve config's `rate_limits:`)."""
        return section_from_value(cls, value, "rate_limits", "limit", _integer)


def _integer(value):
    """Strings of digits (`serve run` key=value args) as integers; the rest as given."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


@dataclass(slots=True)
class TokenBucket:
    """`capacity` tokens, refilled at capacity per minute; `level` as of `updated`."""

    capacity: int
    level: float
    updated: float  # clock time of `level`

    @classmethod
    def full(cls, per_minute: int, now: float) -> TokenBucket:
        return cls(per_minute, float(per_minute), now)

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def take(self, n: int, now: float) -> bool:
        self._refill(now)
        if self.level + _EPS < n:
            return False
        self.level -= n
        return True

    def give(self, n: int, now: float) -> None:
        self._refill(now)
        self.level = min(self.capacity, self.level + n)

    def wait_s(self, n: int, now: float) -> float:
        """Seconds until `n` tokens are there (n <= capacity)."""
        self._refill(now)
        return max(0.0, (n - self.level - _EPS) * 60.0 / self.capacity)

    def headers(self, kind: str, now: float) -> list[tuple[bytes, bytes]]:
        """OpenAI's x-ratelimit-{limit,remaining,reset}-{kind} headers."""
        self._refill(now)
        reset = (self.capacity - self.level) * 60.0 / self.capacity
        return [(f"x-ratelimit-limit-{kind}".encode(), str(self.capacity).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(math.floor(self.level + _EPS)).encode()),
                (f"x-ratelimit-reset-{kind}".encode(), duration(reset).encode())]


def duration(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it: "20ms", "1s", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s" if minutes else f"{rest_text}s"


class Reservation:
    """The tokens one request holds from its key's bucket."""

    __slots__ = ("usage", "tokens", "prompt_tokens")

    def __init__(self, usage: KeyUsage | None, tokens: int, prompt_tokens: int):
        self.usage = usage  # None: nothing reserved (no token limit)
        self.tokens = tokens  # reserved: prompt + max_tokens per sampled completion
        self.prompt_tokens = prompt_tokens

    def settle(self, generated: int) -> None:
        """The request ended having generated `generated` tokens: return what it did not use."""
        if self.usage is not None:
            unused = self.tokens - self.prompt_tokens - generated
            if unused > 0:
                self.usage.tokens.give(unused, self.usage.clock())
            self.usage = None  # settled once


NO_RESERVATION = Reservation(None, 0, 0)


class KeyUsage:
    """One key's buckets and its requests in flight."""

    def __init__(self, config: RateLimitConfig, clock: Callable[[], float], retry_after_s: int,
                 on_limited: Callable[[str], None]):
        now = clock()
        self.clock = clock
        self.requests = TokenBucket.full(config.requests_per_minute, now) if config.requests_per_minute else None
        self.tokens = TokenBucket.full(config.tokens_per_minute, now) if config.tokens_per_minute else None
        self.max_concurrent = config.concurrent_requests  # None: unbounded
        self.ongoing = 0
        self.retry_after_s = retry_after_s  # when a concurrency slot frees is unknown: the server's usual wait
        self.on_limited = on_limited  # counts a refusal by kind: "requests" | "tokens" | "concurrency"

    def admit(self):
        """None when a new request may start (it took one request token), else the 429."""
        if self.max_concurrent is not None and self.ongoing >= self.max_concurrent:
            self.on_limited("concurrency")
            return rate_limited(f"Too many requests in flight for this key: the limit is {self.max_concurrent} "
                                "at once.", self.retry_after_s)
        now = self.clock()
        if self.requests is not None and not self.requests.take(1, now):
            self.on_limited("requests")
            return rate_limited(f"Rate limit reached for requests: the limit is {self.requests.capacity} per minute.",
                                self.requests.wait_s(1, now))
        return None

    def reserve(self, tokens: int, prompt_tokens: int) -> Reservation:
        """Reserve a parsed request's tokens, or raise its 429."""
        bucket = self.tokens
        if bucket is None:
            return NO_RESERVATION
        now = self.clock()
        if tokens > bucket.capacity:
            self.on_limited("tokens")
            raise rate_limited(f"Request too large: it may use {tokens} tokens (prompt and max_tokens), over the "
                               f"limit of {bucket.capacity} tokens per minute. Lower max_tokens or the prompt.", None)
        if not bucket.take(tokens, now):
            self.on_limited("tokens")
            raise rate_limited(f"Rate limit reached for tokens: the limit is {bucket.capacity} per minute and this "
                               f"request may use {tokens} (prompt and max_tokens).", bucket.wait_s(tokens, now))
        return Reservation(self, tokens, prompt_tokens)

    def headers(self) -> list[tuple[bytes, bytes]]:
        now = self.clock()
        out = []
        if self.requests is not None:
            out += self.requests.headers("requests", now)
        if self.tokens is not None:
            out += self.tokens.headers("tokens", now)
        return out


class RateLimiter:
    """The usage of every key seen (keys are the server's fixed set, so this stays small)."""

    def __init__(self, config: RateLimitConfig, retry_after_s: int, on_limited: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.retry_after_s = retry_after_s
        self.on_limited = on_limited
        self.clock = clock
        self._usage: dict[bytes | None, KeyUsage] = {}  # key id (None: no keys, one shared set) -> its usage

    def usage(self, key_id: bytes | None) -> KeyUsage:
        usage = self._usage.get(key_id)
        if usage is None:
            usage = self._usage[key_id] = KeyUsage(self.config, self.clock, self.retry_after_s, self.on_limited)
        return usage


class RateLimitMiddleware:
    """Wraps the app: generation requests are counted against their key and refused past a
    limit; their responses carry the x-ratelimit-* headers. Sits inside `AuthMiddleware`."""

    def __init__(self, app, limiter: RateLimiter):
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope, receive, send):
        if not is_generation(scope):
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        usage = self.limiter.usage(state.get(KEY_ID))
        refusal = usage.admit()
        if refusal is not None:
            return await send_error(send, refusal, usage.headers())

        async def send_with_headers(message):
            if message["type"] == "http.response.start":  # the counts as the response leaves (tokens reserved)
                message = {**message, "headers": [*message.get("headers", ()), *usage.headers()]}
            await send(message)

        state[LIMITS] = usage
        usage.ongoing += 1
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            usage.ongoing -= 1

