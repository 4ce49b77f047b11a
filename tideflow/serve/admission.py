"""Admission control of one replica: at most `max_ongoing` generation requests inside the
graph and `max_queued` more waiting for a slot; past that, an immediate 429 with Retry-After.

It is an ASGI middleware, so a request holds its place from the moment it is admitted until
its response (a whole stream included) has been sent or the client has gone away, whatever
the handler does; and a refusal costs no parsing. Ray Serve's own `max_ongoing_requests` is
set above this bound (see `tideflow.serve.deployment`) so that excess requests reach the
replica to be refused here rather than wait unseen in Serve's queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tideflow.serve.errors import overloaded, send_error

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")
ARRIVAL = "tideflow_arrival"  # scope["state"] key: time.monotonic() when the request reached the replica
QUEUED = "tideflow_queued_s"  # scope["state"] key: seconds it waited for a slot


class Admission:
    def __init__(self, max_ongoing: int, max_queued: int):
        self.max_ongoing = max_ongoing
        self.max_queued = max_queued
        self.slots = asyncio.Semaphore(max_ongoing)
        self.admitted = 0  # running + queued

    @property
    def full(self) -> bool:
        return self.admitted >= self.max_ongoing + self.max_queued


class AdmissionMiddleware:
    """Wraps the app: POSTs to the generation paths are admitted or refused; the rest pass."""

    def __init__(self, app, admission: Admission, retry_after_s: int, on_rejected: Callable[[], None]):
        self.app = app
        self.admission = admission
        self.retry_after_s = retry_after_s
        self.on_rejected = on_rejected

    async def __call__(self, scope, receive, send):
        if not is_generation(scope):
            return await self.app(scope, receive, send)
        adm = self.admission
        arrival = time.monotonic()
        if adm.full:
            self.on_rejected()
            return await send_error(send, overloaded(self.retry_after_s))
        adm.admitted += 1
        try:
            async with adm.slots:
                state = scope.setdefault("state", {})
                state[ARRIVAL], state[QUEUED] = arrival, time.monotonic() - arrival
                await self.app(scope, receive, send)
        finally:
            adm.admitted -= 1


def is_generation(scope) -> bool:
    """Whether an ASGI scope is a POST to one of the generation paths (what runs in the graph)."""
    path = scope.get("path", "").rstrip("/")
    return scope["type"] == "http" and scope["method"] == "POST" and path.endswith(GENERATION_PATHS)
