"""What `/openapi.json` says of the server: every route, its request body's fields and the
error object it may answer with.

The routes read and validate their bodies themselves (strict pydantic, OpenAI error objects
rather than FastAPI's 422), so FastAPI cannot see their models: each route names its body with
`body(...)`, and `install` adds the models' JSON schemas (`tideflow.serve.protocol`) to the
document's components. With API keys, every /v1 operation declares the bearer scheme and its 401.
"""

from __future__ import annotations

from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from tideflow.serve import protocol

_REF = "#/components/schemas/{model}"
_MODELS = (protocol.CompletionRequest, protocol.ChatCompletionRequest, protocol.EmbeddingRequest,
           protocol.TokenizeCompletionRequest, protocol.TokenizeChatRequest, protocol.DetokenizeRequest,
           protocol.ErrorResponse)
_WHY = {
    400: "A client mistake, naming the parameter (`param`).",
    401: "A missing or wrong API key.",
    404: "An unknown model.",
    429: "The replica is full or the key is over a limit (Retry-After says when to retry).",
    500: "The request failed inside the graph.",
    503: "The graph cannot serve now: a dead stage, or its circuit breaker is open (Retry-After).",
}
GENERATION_ERRORS = (400, 404, 429, 500, 503)


def _ref(model) -> dict:
    return {"$ref": _REF.format(model=model.__name__)}


def body(*models) -> dict:
    """A route's `openapi_extra`: its JSON body is one of `models`."""
    schema = _ref(models[0]) if len(models) == 1 else {"anyOf": [_ref(m) for m in models]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def errors(*statuses: int) -> dict:
    """A route's `responses`: the error object under each status."""
    return {s: {"description": _WHY[s], "content": {"application/json": {"schema": _ref(protocol.ErrorResponse)}}}
            for s in statuses}


def install(app, keyed: bool) -> None:
    """Make `app.openapi()` (what /openapi.json serves) build the document described above."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = doc.setdefault("components", {})
            _, defs = models_json_schema([(m, "validation") for m in _MODELS], ref_template=_REF)
            components.setdefault("schemas", {}).update(defs["$defs"])
            if keyed:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                for path, operations in doc["paths"].items():
                    if path.startswith("/v1"):
                        for operation in operations.values():
                            operation["security"] = [{"bearer": []}]
                            operation.setdefault("responses", {}).update(
                                {str(k): v for k, v in errors(401).items()})
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
