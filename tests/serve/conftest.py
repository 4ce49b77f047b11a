"""One Serve instance on a free loopback port for the package, and one module-wide server
(a colocated float64 graph over the tiny Llama) that most tests share. Each Serve app
deploys a graph whose actors import torch, so apps are few: this one, a small one for the
overload and dead-stage tests, and the example's."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Server:
    url: str  # http://127.0.0.1:PORT + route prefix, without /v1
    model: str  # served model name
    model_dir: str


@pytest.fixture(scope="package")
def serve_port(ray_session):
    from ray import serve

    from tideflow.serve.launcher import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


def run_app(port: int, name: str, args: dict, route_prefix: str) -> Server:
    from ray import serve

    from tideflow.serve import build_app

    serve.run(build_app(args), name=name, route_prefix=route_prefix)
    model_dir = args["model"]
    return Server(f"http://127.0.0.1:{port}{route_prefix.rstrip('/')}", model_dir.rstrip("/").split("/")[-1], model_dir)


@pytest.fixture(scope="package")
def server(serve_port, tiny_model_dir):
    from ray import serve

    srv = run_app(serve_port, "main", {"model": tiny_model_dir("llama"), "engine_options": {"dtype": "float64"}}, "/")
    yield srv
    serve.delete("main")


def metrics(url: str) -> dict[str, float]:
    """The server's /metrics as {series (name + labels): value}."""
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def metric(values: dict[str, float], name: str) -> float:
    """The value of `name`, summed over its label sets (0 when absent)."""
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


def wait_until(predicate, timeout: float, interval: float = 0.2):
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        time.sleep(interval)


def run(coro):
    return asyncio.run(coro)
