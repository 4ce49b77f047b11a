"""The serving benchmark's client: an arrival schedule, and an aiohttp sender that streams each
request and stamps every chunk as it arrives.

Each request asks for `stream: true`, `ignore_eos: true` and exactly its trace's `max_tokens`,
with `stream_options.include_usage` so the last chunk carries the server's exact token counts
(a chunk may carry several tokens). A request fails, and is recorded with why, on a non-200
status, an error event in the stream, a stream that ends before `data: [DONE]`, a stream with
no token chunk, or a transport error or timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import urllib.request
from dataclasses import dataclass

import numpy as np

from tideflow.bench.serve_record import RequestRecord

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
_DONE = "[DONE]"


def arrival_offsets(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """Send times in seconds from the start, one per request, the first at 0. Gaps are
    gamma-distributed with shape `burstiness` and mean 1 / `rate` (shape 1 is a Poisson
    process; smaller is burstier); `rate` = inf sends everything at once."""
    if n < 0:
        raise ValueError(f"the number of requests must be non-negative, got {n}")
    if not rate > 0:
        raise ValueError(f"the request rate must be positive (or inf), got {rate}")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness must be positive, got {burstiness}")
    if math.isinf(rate) or n == 0:
        return np.zeros(n)
    gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to send: the server, the endpoint kind and the served model name."""

    base_url: str  # http://host:port (with any route prefix), without /v1
    kind: str  # a key of ENDPOINTS
    model: str  # the served model name

    @property
    def url(self) -> str:
        return self.base_url + ENDPOINTS[self.kind]


def normalize_base_url(url: str) -> str:
    """`http://h:p/`, `http://h:p/v1` -> `http://h:p`: users paste either."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def fetch_model_card(base_url: str, model: str | None, timeout_s: float = 30.0) -> dict:
    """The /v1/models card of `model` (the first model served when None): id, root (the
    server's model directory) and max_model_len. Raises ValueError when `model` is not served."""
    with urllib.request.urlopen(f"{base_url}/v1/models", timeout=timeout_s) as resp:
        cards = json.loads(resp.read())["data"]
    if not cards:
        raise ValueError(f"{base_url} serves no model")
    if model is None:
        return cards[0]
    for card in cards:
        if card["id"] == model:
            return card
    raise ValueError(f"{base_url} does not serve {model!r}; it serves {[c['id'] for c in cards]}")


def request_body(target: Target, prompt: list[int] | str, max_tokens: int) -> dict:
    """A greedy streamed request generating exactly `max_tokens` tokens. Completions take the
    prompt as token ids (exact lengths) or text; chat takes text as one user message."""
    body = {
        "model": target.model,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if target.kind == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


# -- reading a stream ---------------------------------------------------------------------------
def split_events(buffer: bytes) -> tuple[list[str], bytes]:
    """Complete SSE events in `buffer` as the joined text of their `data:` lines, and the
    incomplete rest (kept for the next read)."""
    *complete, rest = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
    events = []
    for raw in complete:
        lines = [line[5:].lstrip() for line in raw.decode("utf-8").split("\n") if line.startswith("data:")]
        if lines:
            events.append("\n".join(lines))
    return events, rest


def carries_tokens(kind: str, chunk: dict) -> bool:
    """Whether a stream chunk carries generated tokens: any chunk with choices, except chat's
    opening chunk (the assistant role, no tokens yet). The usage chunk has no choices."""
    choices = chunk.get("choices") or []
    if kind == "chat":
        return any("role" not in (c.get("delta") or {}) for c in choices)
    return bool(choices)


def _apply_event(kind: str, event: str, now: float, record: RequestRecord) -> bool:
    """Apply one event to `record`; True once the stream is over ([DONE] or an error)."""
    if event == _DONE:
        return True
    chunk = json.loads(event)
    if "error" in chunk:
        error = chunk["error"]
        record.error = f"stream error: {error.get('message', error) if isinstance(error, dict) else error}"
        return True
    if carries_tokens(kind, chunk):
        record.chunk_times.append(now)
    usage = chunk.get("usage")
    if usage:
        record.prompt_len = usage.get("prompt_tokens", record.prompt_len)
        record.output_tokens = usage.get("completion_tokens", record.output_tokens)
    return False


async def _read_stream(kind: str, resp, record: RequestRecord) -> None:
    buffer, done = b"", False
    async for data in resp.content.iter_any():
        now = time.perf_counter()
        events, buffer = split_events(buffer + data)
        for event in events:
            done = done or _apply_event(kind, event, now, record)
    if record.error is not None:
        return
    if not done:
        record.error = "the stream ended before data: [DONE]"
    elif not record.chunk_times:
        record.error = "the stream carried no tokens"
    elif not record.output_tokens:  # no usage chunk: count chunks instead
        record.output_tokens = len(record.chunk_times)


async def _error_text(resp) -> str:
    text = await resp.text()
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text[:300]
    return f"HTTP {resp.status}: {message}"


async def send_request(session, target: Target, body: dict, record: RequestRecord) -> None:
    """POST one streamed request and fill `record`; failures are recorded, never raised."""
    import aiohttp

    record.send_time = time.perf_counter()
    try:
        async with session.post(target.url, json=body) as resp:
            if resp.status != 200:
                record.error = await _error_text(resp)
                return
            await _read_stream(target.kind, resp, record)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:  # ValueError: a malformed chunk
        record.error = f"{type(exc).__name__}: {exc}"


# -- a whole run --------------------------------------------------------------------------------
async def _run(target: Target, bodies: list[dict], records: list[RequestRecord], offsets: np.ndarray,
               max_concurrency: int | None, timeout_s: float) -> float:
    import aiohttp

    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()

        async def one(body: dict, record: RequestRecord, at: float) -> None:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            async with limit:
                await send_request(session, target, body, record)

        await asyncio.gather(*(one(b, r, float(at)) for b, r, at in zip(bodies, records, offsets)))
        return time.perf_counter() - start


def run_requests(target: Target, prompts: list, max_tokens: list[int], prompt_lens: list[int], offsets: np.ndarray,
                 *, max_concurrency: int | None = None, timeout_s: float = 600.0) -> tuple[list[RequestRecord], float]:
    """Send request i at `offsets[i]` seconds (waiting for a slot when `max_concurrency` is
    set) and read every stream to its end. Returns one record per request, in order, and the
    duration from the start to the end of the last stream."""
    if not len(prompts) == len(max_tokens) == len(prompt_lens) == len(offsets):
        raise ValueError("prompts, max_tokens, prompt_lens and offsets must have one entry per request")
    bodies = [request_body(target, p, m) for p, m in zip(prompts, max_tokens)]
    records = [RequestRecord(prompt_len=n, max_tokens=m) for n, m in zip(prompt_lens, max_tokens)]
    duration = asyncio.run(_run(target, bodies, records, offsets, max_concurrency, timeout_s))
    return records, duration
