"""Running the server from a process: `start_server` (start or join Ray, start Serve, deploy
the app) and `serve_forever` (`tideflow serve`: until Ctrl-C / SIGTERM, then shut down).

Stopping deletes the app (each replica shuts its graph down) and then stops whatever this
process started: Serve, and Ray itself when it was started here. When Ray goes down with it,
Ray's shutdown takes Serve's actors along: asking Serve's controller to shut down first would
only add Ray's report that the controller's own shutdown task "failed" (it kills itself).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class RunningServer:
    url: str  # http://host:port, without /v1
    app_name: str  # the Serve application's name
    model_name: str  # the served model name
    started_serve: bool  # this process started Serve (and stops it)
    started_ray: bool  # this process started Ray (and shuts it down)
    stopped: bool = False

    def stop(self) -> None:
        import ray
        from ray import serve

        if self.stopped:
            return
        self.stopped = True
        try:
            serve.delete(self.app_name)
        finally:
            if self.started_ray:
                from ray.serve.context import _set_global_client

                ray.shutdown()  # Serve's actors included
                _set_global_client(None)  # this process's handle on the Serve that went with it
            elif self.started_serve:
                serve.shutdown()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_server(
    args: dict[str, Any] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    app_name: str = "tideflow",
    route_prefix: str = "/",
    quiet: bool = False,
) -> RunningServer:
    """Start (or join, at `address`) Ray, start Serve's HTTP proxy on host:port (0 picks a free
    port) unless Serve already runs, deploy `build_app(args)` and wait until it is ready.
    `quiet`: only errors from Ray's and Serve's loggers in this process (the demo's output)."""
    import ray
    from ray import serve

    from tideflow.serve.config import ServeConfig
    from tideflow.serve.deployment import build_app

    config = ServeConfig.from_args(args).resolved()  # fail on bad args before starting anything
    started_ray = _init_ray(address, logging.ERROR if quiet else logging.INFO)
    if quiet:
        logging.getLogger("ray.serve").setLevel(logging.ERROR)
    started_serve = False
    try:
        started_serve = not _serve_running()
        port = port or free_port(host)
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app({**(args or {}), "model": config.model, "served_model_name": config.served_model_name}),
                  name=app_name, route_prefix=route_prefix, blocking=False)
    except BaseException:
        if started_serve:
            serve.shutdown()
        if started_ray:
            ray.shutdown()
        raise
    prefix = route_prefix.rstrip("/")
    url = f"http://{host}:{port}{prefix}"
    return RunningServer(url, app_name, config.served_model_name, started_serve, started_ray)


def _init_ray(address: str | None, logging_level: int = logging.INFO) -> bool:
    """Start or join Ray unless this process is connected already; whether it connected now."""
    import ray

    from tideflow.runtime.dataflow.executor import NAMESPACE

    if ray.is_initialized():
        return False
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging_level)
    return True


def _serve_running() -> bool:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return True
    except ValueError:
        return False


def serve_forever(args: dict[str, Any] | None, *, host: str, port: int, address: str | None) -> int:
    """`tideflow serve`: serve until SIGINT or SIGTERM, then shut down cleanly."""
    from tideflow.serve.config import ServeConfig

    config = ServeConfig.from_args(args).resolved()  # bad arguments fail before anything starts
    started_ray = _init_ray(address)
    # Ray's driver handles SIGTERM by aborting the process: while starting, both signals
    # interrupt (KeyboardInterrupt); once serving, they ask for a clean stop
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server = start_server(args, host=host, port=port, address=address)
        except KeyboardInterrupt:
            print("tideflow serve: interrupted while starting", flush=True)
            return 130
        stop = threading.Event()
        for sig in previous:
            signal.signal(sig, lambda *_: stop.set())
        try:
            print(f"tideflow serve: model {server.model_name!r} at {server.url}/v1 (Ctrl-C to stop)", flush=True)
            if config.api_keys:  # how many, never which
                print(f"tideflow serve: /v1 routes need one of {len(config.api_keys)} API key(s)", flush=True)
            while not stop.wait(0.5):
                pass
            print("tideflow serve: shutting down", flush=True)
        finally:
            server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started_ray:
            import ray

            ray.shutdown()
    print("tideflow serve: stopped", flush=True)
    return 0
