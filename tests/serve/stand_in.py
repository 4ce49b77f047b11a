"""A server without Ray: `OpenAIServer` over a stand-in graph handle that runs requests on an
in-process `LLM`, called through its ASGI app directly (no sockets, no Serve app)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import NamedTuple

from tideflow import LLM
from tideflow.runtime.dataflow.collector import CompletionDelta, OutputDelta
from tideflow.serve.config import ServeConfig
from tideflow.serve.model_info import ModelInfo
from tideflow.serve.server import OpenAIServer, build_asgi_app


class Clock:
    """A monotonic clock a test steps (the server's breaker and rate limits take it), so time
    passes without sleeping."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Status:
    """The collector's `status` actor method, as `OpenAIServer.health` calls it: nothing dead."""

    @staticmethod
    async def remote():
        return {"dead": []}


class _Collector:
    status = _Status


class _Graph:
    name = "stand-in"


class LLMHandle:
    """What `OpenAIServer` needs of a `GraphHandle`: `submit_deltas`, answered by an `LLM` in one
    delta; a graph name and a collector whose status reports nothing dead (for /health)."""

    graph = _Graph
    collector = _Collector

    def __init__(self, llm: LLM):
        self.llm = llm
        self.ids = itertools.count()

    async def submit_deltas(self, prompt: dict, params):
        (out,) = self.llm.generate([prompt], params, use_tqdm=False)
        completions = [CompletionDelta(c.index, list(c.token_ids), c.text, c.logprobs, c.cumulative_logprob,
                                       c.finish_reason, c.stop_reason) for c in out.outputs]
        yield OutputDelta(f"r{next(self.ids)}", True, completions, out.prompt_token_ids, None, out.prompt_logprobs,
                          out.embedding)


def stand_in_server(model_dir: str, config: ServeConfig | None = None, clock=time.monotonic, llm: LLM | None = None,
                    **engine_options) -> OpenAIServer:
    """A server over `model_dir` (`config`, default ServeConfig()), its requests run by `llm`
    (default: a new in-process LLM with `engine_options`). `clock`: its breaker's and limits'."""
    name = model_dir.rstrip("/").split("/")[-1]
    info = ModelInfo.load(name, model_dir)
    llm = llm if llm is not None else LLM(model_dir, **engine_options)
    return OpenAIServer(config or ServeConfig(), LLMHandle(llm), info, clock)


def stand_in_app(model_dir: str, **engine_options):
    """The ASGI app of a server over `model_dir`, its requests run by an in-process LLM."""
    return build_asgi_app(stand_in_server(model_dir, **engine_options))


class Reply(NamedTuple):
    status: int
    body: dict | str  # the JSON body, or the text of an SSE stream
    headers: dict[str, str]  # names in lower case


def call(app, method: str, path: str, body=None, ctype: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict | str]:
    """One request to an ASGI app: (status, the JSON body, or the text of an SSE stream).
    `body`: a dict is sent as JSON, str or bytes raw; `ctype` "" sends no content type."""
    reply = asyncio.run(ask(app, method, path, body, ctype, headers))
    return reply.status, reply.body


async def ask(app, method: str, path: str, body=None, ctype: str | None = None, headers: dict[str, str] | None = None,
              root_path: str = "") -> Reply:
    """`call` inside a running event loop (requests in flight together), with the response's
    headers. `root_path`: the route prefix Serve would give the app (`path` includes it)."""
    if isinstance(body, dict):
        data = json.dumps(body).encode()
    else:
        data = body.encode() if isinstance(body, str) else body or b""
    ctype = "application/json" if ctype is None else ctype
    raw_headers = [(b"content-type", ctype.encode())] if ctype else []
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": raw_headers, "http_version": "1.1", "scheme": "http",
             "server": ("test", 80), "client": ("test", 1), "root_path": root_path}
    sent = {"status": None, "body": b"", "headers": {}}
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": data, "more_body": False}
        await asyncio.sleep(3600)

    async def send(message):
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
            sent["headers"] = {k.decode().lower(): v.decode() for k, v in message.get("headers", ())}
        elif message["type"] == "http.response.body":
            sent["body"] += message.get("body", b"")

    await app(scope, receive, send)
    text = sent["body"].decode()
    try:
        body = json.loads(text)
    except ValueError:
        body = text
    return Reply(sent["status"], body, sent["headers"])
