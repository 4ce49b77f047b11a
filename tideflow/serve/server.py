"""`OpenAIServer`: one replica's server over its graph, and the HTTP app that exposes it.

Requests are parsed and validated in full (`tideflow.serve.prepare`) before anything is
submitted; then every prompt of a request becomes one streaming `GraphHandle.submit`, whose
iterator is always closed on the way out, so a client that goes away (Serve cancels the
handler) aborts its requests and frees their KV blocks.

The app's door, outermost first: API keys on /v1 (`auth`), the circuit breaker (`breaker`),
per-key limits (`rate_limits`), admission (`admission`). Each is an ASGI middleware, there only
when configured (admission always), so a refusal costs no parsing; the server reports each
request's outcome back to the breaker and its token use back to its key's limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

import tideflow
from tideflow.outputs import RequestOutput, best_completions
from tideflow.runtime.dataflow.collector import OutputDelta, empty_output
from tideflow.serve import openapi, tokenize_routes
from tideflow.serve.admission import ARRIVAL, QUEUED, Admission, AdmissionMiddleware
from tideflow.serve.auth import ApiKeys, AuthMiddleware
from tideflow.serve.breaker import CLOSED, HALF_OPEN, NO_TICKET, TICKET, BreakerMiddleware, CircuitBreaker, Ticket
from tideflow.serve.config import ServeConfig
from tideflow.serve.embeddings import embeddings_response, prepare_embeddings
from tideflow.serve.errors import (
    APIError,
    from_graph_failure,
    from_validation,
    model_not_found,
    server_error,
)
from tideflow.serve.json_body import read_json
from tideflow.serve.metrics import CONTENT_TYPE, ServeMetrics
from tideflow.serve.model_info import ModelInfo
from tideflow.serve.prepare import Prepared, prepare_chat, prepare_completion
from tideflow.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from tideflow.serve.rate_limits import LIMITS, NO_RESERVATION, RateLimiter, RateLimitMiddleware, Reservation
from tideflow.serve.responses import Stream, chat_response, completion_response, without_generation

logger = logging.getLogger(__name__)
_CONTROL_TIMEOUT_S = 10.0  # health and stats calls to the graph's actors
_DONE = "data: [DONE]\n\n"
_BREAKER_STATES = {CLOSED: 0, HALF_OPEN: 1}  # else open: 2 (tideflow:circuit_breaker_state)


@dataclass(slots=True)
class Admitted:
    """What the door gave one generation request."""

    arrival: float  # time.monotonic() when it reached the replica
    ticket: Ticket  # its place in the circuit breaker (NO_TICKET without one)
    reservation: Reservation  # the tokens it holds from its key's limit (NO_RESERVATION without one)


class OpenAIServer:
    def __init__(self, config: ServeConfig, handle, info: ModelInfo, clock: Callable[[], float] = time.monotonic):
        """`clock`: what the breaker and the rate limits measure time with (tests step it)."""
        self.config = config
        self.handle = handle  # tideflow.runtime.dataflow.executor.GraphHandle
        self.info = info
        self.metrics = ServeMetrics(info.name)
        self.admission = Admission(config.max_ongoing_requests, config.max_queued_requests)
        self.keys = ApiKeys(config.api_keys)  # empty: no authentication
        self.limiter = (RateLimiter(config.rate_limits, config.retry_after_s, self.metrics.rate_limited, clock)
                        if config.rate_limits.active else None)
        self.breaker = CircuitBreaker(config.breaker, clock) if config.breaker.active else None
        self.dead: str | None = None  # why the graph can no longer serve, once known

    @classmethod
    async def start(cls, config: ServeConfig, graph) -> OpenAIServer:
        """Deploy `graph` (a tideflow Graph) and read its model's limits."""
        info = await asyncio.to_thread(_model_info, config, graph)
        handle = await asyncio.to_thread(graph.deploy, migration_limit=config.migration_limit)
        return cls(config, handle, info)

    async def close(self) -> None:
        try:
            await asyncio.to_thread(self.handle.shutdown)
        except Exception:  # noqa: BLE001  (a dead collector; the stage actors die with this replica anyway)
            logger.warning("graph %s did not shut down cleanly", self.handle.graph.name, exc_info=True)

    # -- health and stats ---------------------------------------------------------------------
    async def health(self) -> str | None:
        """None when every stage replica is alive; else why not."""
        try:
            status = await asyncio.wait_for(_ref(self.handle.collector.status.remote()), _CONTROL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001  (a dead or stuck collector)
            self.dead = f"the graph is unreachable: {type(exc).__name__}"
            return self.dead
        if status["dead"]:
            self.dead = f"stage replica(s) died: {', '.join(status['dead'])}"
        return self.dead

    async def stats(self) -> dict | None:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.handle.stats), _CONTROL_TIMEOUT_S)
        except Exception:  # noqa: BLE001  (metrics keep their last values)
            return None

    # -- generation ---------------------------------------------------------------------------
    async def generate(self, request, kind: str):
        """Serve one /v1/completions (kind "completion") or /v1/chat/completions ("chat") request."""
        if self.dead:
            raise server_error(self.dead, unavailable=True)
        body = await read_json(request)
        try:
            if kind == "chat":
                prep = prepare_chat(ChatCompletionRequest.model_validate(body, strict=True), self.info,
                                    self.config.tool_call_parser)
            else:
                prep = prepare_completion(CompletionRequest.model_validate(body, strict=True), self.info)
        except ValidationError as exc:
            raise from_validation(exc) from None
        admitted = self._admitted(request, prep.tokens_reserved(self.info.max_model_len), sum(prep.num_prompt_tokens))
        if prep.stream:
            return StreamingResponse(self._sse(kind, prep, admitted), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        outputs: list[RequestOutput | None] = [None] * len(prep.prompts)
        try:
            async for p, delta in self._outputs(prep, admitted):
                if outputs[p] is None:
                    outputs[p] = empty_output(delta.request_id, None, prep.params.sampled_params().n)
                delta.apply_to(outputs[p])
        except Exception as exc:  # noqa: BLE001  (admitted requests fail only on the server's side)
            raise await self._failure(exc) from None
        if prep.params.ranks_completions:
            outputs = [best_completions(o, prep.params.n, prep.top_logprobs is not None) for o in outputs]
        render = chat_response if kind == "chat" else completion_response
        return JSONResponse(render(prep, self.info, outputs))

    async def embeddings(self, request):
        """Serve one /v1/embeddings request."""
        if self.dead:
            raise server_error(self.dead, unavailable=True)
        body = await read_json(request)
        try:
            prep = prepare_embeddings(EmbeddingRequest.model_validate(body, strict=True), self.info)
        except ValidationError as exc:
            raise from_validation(exc) from None
        tokens = sum(prep.num_prompt_tokens)
        admitted = self._admitted(request, tokens, tokens)
        embeddings: list[list[float] | None] = [None] * len(prep.prompts)
        try:
            async for p, delta in self._submitted(prep.prompts, prep.params, admitted):
                if delta.embedding is not None:
                    embeddings[p] = delta.embedding
        except Exception as exc:  # noqa: BLE001  (admitted requests fail only on the server's side)
            raise await self._failure(exc) from None
        if any(e is None for e in embeddings):
            raise server_error("the graph returned no embedding")
        return JSONResponse(embeddings_response(prep, self.info, embeddings))

    def _admitted(self, request, tokens: int, prompt_tokens: int) -> Admitted:
        """A parsed request's admission: its key reserves `tokens` (a 429 raised when over its
        limit), it joins the queue-time metric."""
        state = request.scope.get("state", {})
        usage = state.get(LIMITS)
        reservation = usage.reserve(tokens, prompt_tokens) if usage is not None else NO_RESERVATION
        self.metrics.queue.observe(state.get(QUEUED, 0.0))
        return Admitted(state.get(ARRIVAL) or time.monotonic(), state.get(TICKET, NO_TICKET), reservation)

    async def _sse(self, kind: str, prep: Prepared, admitted: Admitted) -> AsyncIterator[str]:
        stream = Stream(kind, prep, self.info)
        for chunk in stream.opening():
            yield _event(chunk)
        try:
            async for p, delta in self._outputs(prep, admitted):
                for chunk in stream.update(p, delta):
                    yield _event(chunk)
        except Exception as exc:  # noqa: BLE001  (the stream ends with an explicit error event, as vLLM's)
            yield (await self._failure(exc)).sse()
            yield _DONE
            return
        for chunk in stream.closing():
            yield _event(chunk)
        yield _DONE

    async def _outputs(self, prep: Prepared, admitted: Admitted) -> AsyncIterator[tuple[int, OutputDelta]]:
        """`_submitted` for a completions or chat request (an echo with max_tokens 0 less what it generated)."""
        async for p, delta in self._submitted(prep.prompts, prep.params.sampled_params(), admitted):
            yield p, without_generation(delta) if prep.echo_only else delta

    async def _submitted(self, prompts: list, params, admitted: Admitted) -> AsyncIterator[tuple[int, OutputDelta]]:
        """(prompt index, what its output gained) as the outputs of every prompt grow, the
        collector's deltas as they come; raises the first failure. Leaving early (an error, a
        cancelled client) aborts what still runs. The breaker hears of the first output and
        of how the request ended; the key's limit gets back the tokens it did not generate."""
        queue: asyncio.Queue = asyncio.Queue()
        trackers = [self.metrics.tracker(admitted.arrival) for _ in prompts]
        ticket = admitted.ticket

        async def pump(p: int) -> None:
            tracker = trackers[p]
            try:
                async with aclosing(self.handle.submit_deltas(prompts[p], params)) as deltas:
                    async for delta in deltas:
                        tracker.observe(delta)
                        if any(c.finish_reason == "abort" for c in delta.completions):  # not asked for by this client
                            raise RuntimeError("the graph aborted the request")
                        queue.put_nowait((p, delta, None))
            except Exception as exc:  # noqa: BLE001  (handed to the consumer)
                queue.put_nowait((p, None, exc))
            else:
                queue.put_nowait((p, None, None))

        tasks = [asyncio.create_task(pump(p)) for p in range(len(prompts))]
        try:
            running = len(tasks)
            while running:
                p, out, exc = await queue.get()
                if exc is not None:
                    ticket.finished(failed=True)
                    raise exc
                if out is None:
                    running -= 1
                else:
                    ticket.first_output()
                    yield p, out
            ticket.finished(failed=False)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            admitted.reservation.settle(sum(t.tokens for t in trackers))

    async def _failure(self, exc: BaseException) -> APIError:
        error = from_graph_failure(exc)
        logger.warning("request failed in the graph: %s", error.message)
        if error.status == 503:
            await self.health()  # remember a dead graph: later requests fail fast
        return error

    # -- the other endpoints ------------------------------------------------------------------
    def models(self) -> dict:
        info = self.info
        card = {"id": info.name, "object": "model", "created": info.created, "owned_by": "tideflow",
                "root": info.path, "parent": None, "max_model_len": info.max_model_len}
        return {"object": "list", "data": [card]}

    async def metrics_text(self) -> bytes:
        if self.breaker is not None:
            self.metrics.breaker_state.set(_BREAKER_STATES.get(self.breaker.state, 2))
        return self.metrics.exposition(await self.stats())


def build_asgi_app(server: OpenAIServer):
    """The FastAPI app of one replica, wrapped in its door (see the module's docstring)."""
    app = FastAPI(title="tideflow OpenAI-compatible server", version=tideflow.__version__, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json")

    def error_response(error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):  # unknown path, wrong method
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(APIError(exc.status_code, str(exc.detail), type=kind, code=None))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        logger.exception("unexpected error")
        return error_response(server_error(f"internal error: {type(exc).__name__}"))

    generation_errors = openapi.errors(*openapi.GENERATION_ERRORS)

    @app.post("/v1/completions", openapi_extra=openapi.body(CompletionRequest), responses=generation_errors)
    async def completions(request: Request):
        return await server.generate(request, "completion")

    @app.post("/v1/chat/completions", openapi_extra=openapi.body(ChatCompletionRequest), responses=generation_errors)
    async def chat_completions(request: Request):
        return await server.generate(request, "chat")

    @app.post("/v1/embeddings", openapi_extra=openapi.body(EmbeddingRequest), responses=generation_errors)
    async def embeddings(request: Request):
        return await server.embeddings(request)

    @app.post("/tokenize", openapi_extra=openapi.body(TokenizeCompletionRequest, TokenizeChatRequest),
              responses=openapi.errors(400, 404))
    async def tokenize(request: Request):
        return tokenize_routes.tokenize(await read_json(request), server.info)

    @app.post("/detokenize", openapi_extra=openapi.body(DetokenizeRequest), responses=openapi.errors(400, 404))
    async def detokenize(request: Request):
        return tokenize_routes.detokenize(await read_json(request), server.info)

    @app.get("/version")
    async def version():
        return tokenize_routes.version()

    @app.get("/v1/models")
    async def models():
        return server.models()

    @app.get("/v1/models/{model_id:path}", responses=openapi.errors(404))
    async def model(model_id: str):
        if model_id != server.info.name:
            raise model_not_found(model_id)
        return server.models()["data"][0]

    @app.get("/health", responses=openapi.errors(503))
    async def health():
        reason = await server.health()
        if reason is not None:
            return error_response(server_error(reason, unavailable=True))
        return JSONResponse({"status": "ok", "graph": server.handle.graph.name})

    @app.get("/metrics")
    async def metrics():
        return Response(await server.metrics_text(), media_type=CONTENT_TYPE)

    openapi.install(app, keyed=len(server.keys) > 0)
    # the last added runs first: keys, then the breaker, then the key's limits, then admission
    app.add_middleware(
        AdmissionMiddleware,
        admission=server.admission,
        retry_after_s=server.config.retry_after_s,
        on_rejected=server.metrics.rejected,
    )
    if server.limiter is not None:
        app.add_middleware(RateLimitMiddleware, limiter=server.limiter)
    if server.breaker is not None:
        app.add_middleware(BreakerMiddleware, breaker=server.breaker, on_shed=server.metrics.shed)
    if len(server.keys):
        app.add_middleware(AuthMiddleware, keys=server.keys, on_refused=server.metrics.unauthorized)
    return app


# -- helpers ------------------------------------------------------------------------------------
def _model_info(config: ServeConfig, graph) -> ModelInfo:
    """The model limits of `graph`: its tokenizer from the first stage's model config,
    config.json from the first stage that names a model, max_model_len from any stage that
    sets it, the generation-config options from any stage that sets them (stages in the order
    the graph added them)."""
    compiled = graph.compile()  # parses each stage's options (a bad one fails here, naming it)
    models = [compiled.configs[spec.name].engine for spec in graph.stages]
    models = [engine.model for engine in models if engine is not None]
    first = compiled.configs[graph.stages[0].name].engine
    source = first.model if first is not None else None
    model = models[0].model  # the graph's (a GGUF file's converted directory, when --model named one)
    max_len = next((m.max_model_len for m in models if m.max_model_len), None)
    # the generation-config options of the stage that sets them (the engine's: text stages get none)
    generation = next((m for m in models if (m.generation_config, m.override_generation_config) != ("auto", ())),
                      models[0])
    info = ModelInfo.load(config.served_model_name, str(model), tokenizer=source.tokenizer if source else None,
                          max_model_len=max_len, trust_remote_code=source.trust_remote_code if source else False,
                          chat_template=source.chat_template if source else None,
                          generation_config=generation.generation_config,
                          override_generation_config=generation.override_generation_config)
    info.generation.log_applied(f"model {config.served_model_name!r}")
    return info


def _event(chunk: dict) -> str:
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"


async def _ref(object_ref):
    return await object_ref
