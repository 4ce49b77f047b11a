"""An OpenAI-compatible HTTP server on Ray Serve, over a deployed tideflow graph.

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (SSE with `stream: true`),
`POST /v1/embeddings`, `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus, `tideflow:`
names), `POST /tokenize`, `POST /detokenize`, `GET /version`, `GET /openapi.json`.

- `build_app(args)` -> `serve.Application` (`import_path: tideflow.serve:build_app` in a Serve
  config file; `args` are `ServeConfig`'s fields).
- `start_server(...)` / `ServerProcess`: run one on a local or joined Ray cluster
  (what `tideflow serve` and `tideflow demo` use).

Modules: `config` (ServeConfig), `config_sections` (its breaker and rate_limits sections), `protocol` (request bodies), `json_body` (reading a body),
`prepare` (validation -> SamplingParams), `tools` (tools and tool_choice -> the template's tools,
a constraint, a parser), `tool_parsers/` (tool calls found in replies), `responses` (OpenAI
response / chunk rendering), `tool_responses` (tool calls in responses and chunks), `errors`,
`auth` (API keys, 401), `breaker` (the circuit breaker, 503), `rate_limits` (per-key limits,
429), `admission` (bounded in-flight requests, 429), `metrics`, `openapi` (/openapi.json),
`server` (the replica's server and HTTP app), `deployment` (the Serve deployment, `build_app`),
`launcher`.
Importing this package loads neither ray nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tideflow.serve.config import ServeConfig

if TYPE_CHECKING:
    from tideflow.serve.launcher import RunningServer, start_server

__all__ = ["ServeConfig", "build_app", "start_server", "RunningServer"]


def build_app(args=None):
    """The Serve application for `args` (a dict of `ServeConfig` fields)."""
    from tideflow.serve.deployment import build_app as build

    return build(args)


def __getattr__(name: str):
    if name in ("start_server", "RunningServer"):
        from tideflow.serve import launcher

        return getattr(launcher, name)
    raise AttributeError(f"module 'tideflow.serve' has no attribute {name!r}")
