"""OpenAI error objects: `{"error": {"message", "type", "param", "code"}}` and their statuses.

Client mistakes are 400 (`invalid_request_error`) or 404 (`model_not_found`); a missing or
wrong API key is a 401; overload and a key over its limits are a 429 with Retry-After; failures
on the server's side are 500 / 503 (`server_error`), and so is a graph whose circuit breaker is
open (503 with Retry-After).
"""

from __future__ import annotations

import json
import math
from typing import Any


class APIError(Exception):
    """An error the server answers with an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def sse(self) -> str:
        """The error as a server-sent event, the way a failed stream ends."""
        return f"data: {json.dumps(self.body())}\n\n"


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")


def unauthorized(missing: bool) -> APIError:
    """401 for a /v1 request without a valid key, as OpenAI answers it. The key a client sent is
    never echoed (OpenAI shows part of it; a server whose logs or proxies keep bodies should not)."""
    message = ("You didn't provide an API key: send it as an `Authorization: Bearer <key>` header." if missing
               else "Incorrect API key provided.")
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def retry_after(seconds: float) -> dict[str, str]:
    """Retry-After (whole seconds, at least 1, as HTTP has it) and retry-after-ms (what the openai
    client reads first, so it waits no longer than it must)."""
    return {"Retry-After": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


def rate_limited(message: str, wait_s: float | None) -> APIError:
    """429 for a key over one of its limits; `wait_s` None: waiting cannot help (the request alone
    is over the limit), so no Retry-After."""
    return APIError(429, message, type="rate_limit_error", code="rate_limit_exceeded",
                    headers=retry_after(wait_s) if wait_s is not None else None)


def shed(wait_s: float) -> APIError:
    """503 while the graph's circuit breaker is open."""
    return APIError(503, "The model is overloaded (slow or failing requests); retry later.", type="server_error",
                    code="service_unavailable", headers=retry_after(wait_s))


def overloaded(retry_after_s: int) -> APIError:
    return APIError(
        429,
        "The server is at capacity; retry later.",
        type="rate_limit_error",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after_s)},
    )


def server_error(message: str, unavailable: bool = False) -> APIError:
    """500, or 503 when the graph behind the server cannot take requests (a stage died)."""
    return APIError(
        503 if unavailable else 500,
        message,
        type="server_error",
        code="service_unavailable" if unavailable else "internal_error",
    )


def from_graph_failure(exc: BaseException) -> APIError:
    """The error for a request that failed inside the graph after it was admitted: a dead
    stage (or an unreachable actor) is a 503, anything else a 500. Client mistakes never get
    here: they are rejected before submission."""
    from ray.exceptions import RayActorError

    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    unavailable = isinstance(exc, RayActorError) or "died" in text
    return server_error(f"the request failed inside the graph: {text}", unavailable=unavailable)


# what each request field must be, for the messages of type errors
EXPECTED = {
    "prompt": "a string, a list of strings, a list of token ids or a list of lists of token ids",
    "messages": "a list of messages, each with a string `role` and string (or text-part list) `content`",
    "stop": "a string or a list of strings",
    "stream_options": "an object such as {\"include_usage\": true}",
}


def from_validation(exc) -> APIError:
    """A 400 naming the first bad field of a pydantic ValidationError."""
    errors = exc.errors()
    first = errors[0]
    loc = first.get("loc") or ()
    param = str(loc[0]) if loc else None
    if first.get("type") == "missing":
        return bad_request(f"'{param}' is a required property", param, code="missing_required_parameter")
    plain = all(isinstance(part, int) or part.isidentifier() for part in loc)  # no union member names in it
    if first.get("type") == "literal_error" and plain:  # a word outside its list ("role": "alien"): say where
        return bad_request(f"'{_dotted(loc)}': {first.get('msg')}, got {repr(first.get('input'))[:40]}", param)
    if param in EXPECTED:
        return bad_request(f"'{param}' must be {EXPECTED[param]}", param, code="invalid_type")
    return bad_request(f"'{param}': {first.get('msg')}", param, code="invalid_type")


def _dotted(loc) -> str:
    """A pydantic location as a path: ("messages", 0, "role") -> "messages[0].role"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


async def send_error(send, error: APIError, extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer an ASGI request with `error`, from a middleware (before any route ran)."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    headers += list(extra_headers)
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
