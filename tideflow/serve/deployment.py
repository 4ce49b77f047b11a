"""The Ray Serve side: `OpenAIIngress`, the deployment, and `build_app`, its application builder.

Each Serve replica deploys and owns its own graph, named `{graph}-{replica id}` so that
replicas never collide on actor names. The graph's actors are created by the replica, so
they also die with it (Ray's ownership); a graceful shutdown stops them explicitly. Scaling
the server therefore scales whole graphs; one graph shared by many replicas is not supported.
A replica whose graph has a dead stage fails Serve's health check and is replaced (with a
fresh graph); until then `/health` answers 503 and requests fail fast with 503.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from tideflow.serve.config import ServeConfig

DEPLOYMENT_NAME = "OpenAIIngress"
# Serve's own per-replica concurrency sits this far above the admission bound, so that excess
# requests reach the replica and get their 429 at once instead of waiting in Serve's queue
# (health checks and /metrics fit in it too).
SERVE_HEADROOM = 256


def build_graph(config: ServeConfig, graph_data: Mapping | None, name: str):
    """The graph one replica deploys, named `name`."""
    from tideflow.graphs import Graph, builtin_graph

    if config.graph_is_builtin:
        return builtin_graph(config.graph)(config.model, name=name, **config.graph_options, **config.engine_options)
    data = {**graph_data, "name": name}
    if config.model is not None:  # --model replaces the model of every stage that names one
        data["stages"] = [
            {**s, "options": {**s["options"], "model": config.model}} if s.get("options", {}).get("model") else s
            for s in data["stages"]
        ]
    return Graph.from_dict(data)


class OpenAIIngress:
    """One Serve replica of the OpenAI-compatible server (its ASGI app is built at init)."""

    async def __init__(self, config: ServeConfig, graph_data: Mapping | None = None):
        from tideflow.serve.server import OpenAIServer

        base = graph_data["name"] if graph_data else config.graph
        graph = build_graph(config, graph_data, f"{base}-{_replica_id()}")
        self.server = await OpenAIServer.start(config, graph)

    def __serve_build_asgi_app__(self):
        from tideflow.serve.server import build_asgi_app

        return build_asgi_app(self.server)

    async def check_health(self) -> None:
        reason = await self.server.health()
        if reason is not None:
            raise RuntimeError(reason)  # Serve replaces the replica, and with it the graph

    async def __del__(self):
        server = getattr(self, "server", None)
        if server is not None:
            await server.close()


def _replica_id() -> str:
    from ray import serve

    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001  (outside a replica, e.g. a unit test)
        return uuid.uuid4().hex[:8]


def build_app(args: Mapping[str, Any] | None = None):
    """The Serve application: `serve.run(build_app({...}))`, or a Serve config file with
    `import_path: tideflow.serve:build_app` and the same keys under `args:` (see
    `tideflow.serve.config.ServeConfig` for them)."""
    from ray import serve

    from tideflow.graphs import Graph

    config = ServeConfig.from_args(args).resolved()
    graph_data = None
    if not config.graph_is_builtin:
        graph_data = Graph.from_yaml(config.graph).to_dict()  # read here: replicas need not see the file
    deployment = serve.deployment(
        serve.ingress()(OpenAIIngress),
        name=DEPLOYMENT_NAME,
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.max_ongoing_requests + config.max_queued_requests + SERVE_HEADROOM,
        ray_actor_options={"num_cpus": 0},
        max_constructor_retry_count=1,
        health_check_period_s=config.health_check_period_s,
        health_check_timeout_s=config.health_check_timeout_s,
    )
    return deployment.bind(config, graph_data)
