"""Deploying a graph onto Ray actors, and the handle clients use.

`deploy(graph)` starts (or joins) Ray, compiles the graph against the live cluster, starts
one `StageHost` actor per replica (named `{graph}/{stage}/{index}` in the `tideflow` namespace),
wires each to the replicas downstream, starts their loops, and starts the collector that
is the graph's sink and watches every replica.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from tideflow.runtime.dataflow.role import role_target
from tideflow.runtime.dataflow.router import Router
from tideflow.outputs import RequestOutput
from tideflow.runtime.dataflow.delta_streams import DeltaStreams
from tideflow.runtime.dataflow.collector import OutputDelta, RequestError, copy_output, empty_output
from tideflow.runtime.dataflow.ingress import normalize, request_batch, request_row
from tideflow.runtime.dataflow.wiring import Wiring
from tideflow.runtime.parallel.placement import check_capacity, release, replica_placement, stage_demand, wait_placed

NAMESPACE = "tideflow"
DEFAULT_PLACEMENT_TIMEOUT_S = 30.0  # how long a replica may wait for resources before deploy gives up


def coordinator_name(graph: str) -> str:
    """The named actor of a deployed graph's checkpoint coordinator (in NAMESPACE)."""
    return f"{graph}/checkpoints"


def deploy(
    graph,
    address: str | None = None,
    *,
    inbox_size: int | None = None,
    ray_init: dict | None = None,
    recovery: bool = True,
    checkpoint_dir: str | None = None,
    checkpoint_interval: float | None = None,
    checkpoint_batches: int | None = None,
    max_restarts: int | None = None,
    faults=(),
    request_log: str | None = None,
    placement_timeout: float = DEFAULT_PLACEMENT_TIMEOUT_S,
    migration_limit: int | None = None,
) -> "GraphHandle":
    """Start `graph` on Ray and return its handle. `address` joins an existing cluster
    ("auto" or "ray://..."); None starts a local Ray instance unless one is running.
    `inbox_size` overrides every edge's queue size.

    Recovery is on by default: replicas log their inputs and are checkpointed every
    `checkpoint_interval` seconds or `checkpoint_batches` logged batches into
    `checkpoint_dir` (a local directory or a pyarrow.fs URI; None: a temporary directory
    removed at shutdown); a crashed replica is restarted up to `max_restarts` times and
    replays its log, and every request completes exactly once. `recovery=False` (with
    `checkpoint_dir=None`) turns it off, for benchmarks. `faults` (FaultSpec) crash chosen
    replicas on purpose, for tests.

    A graph the cluster cannot place never hangs the deploy (docs/reliability.md fault 11):
    when its stages ask, in all, for more than the cluster has, PlacementError (a ValueError)
    names them before anything starts; a replica that waits for resources longer than
    `placement_timeout` seconds (other actors hold them) stops the deploy with an error naming it.

    With recovery on, the requests of a dead replica of a stage whose role migrates (decode,
    the colocated engine) and that has 2+ replicas move at once to a live replica, rebuilt from
    the prompt plus what the client already has (docs/reliability.md fault 10), instead of
    waiting for the restart. `migration_limit` (each stage's `migration_limit` option, else 3)
    bounds how often one request may move; past it the request fails explicitly. 0 turns
    migration off."""
    import ray

    from tideflow.runtime.dataflow.collector_actor import CollectorActor
    from tideflow.runtime.dataflow.stage_host import StageHost
    from tideflow.runtime.recovery.settings import recovery_config

    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, **(ray_init or {}))
    compiled = graph.compile() if hasattr(graph, "compile") else graph
    demands = [stage_demand(spec, compiled.configs[spec.name].experts) for spec in compiled.stages]
    check_capacity(compiled.name, demands, ray.cluster_resources())
    config = recovery_config(compiled.name, recovery, checkpoint_dir, checkpoint_interval, checkpoint_batches, max_restarts, faults)
    limits = migration_limits(compiled, migration_limit) if config is not None else {}
    for spec in compiled.stages:
        for i in range(spec.replicas):
            name = f"{compiled.name}/{spec.name}/{i}"
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                continue
            raise ValueError(f"graph {compiled.name!r} is already deployed (actor {name} exists)")

    coordinator = None
    if config is not None:
        from tideflow.runtime.recovery.coordinator import CheckpointCoordinator

        coordinator = ray.remote(CheckpointCoordinator).options(
            name=coordinator_name(compiled.name), namespace=NAMESPACE, num_cpus=0, max_concurrency=1000
        ).remote(config)
    launcher = ReplicaLauncher(compiled, StageHost, config, inbox_size, coordinator, limits)
    actors: dict[str, dict[int, object]] = {
        spec.name: {i: launcher.start(spec.name, i) for i in range(spec.replicas)} for spec in compiled.stages
    }
    collector = ray.remote(CollectorActor).options(
        name=f"{compiled.name}/collector", namespace=NAMESPACE, num_cpus=0, max_concurrency=1000
    ).remote()
    wirings = {
        f"{stage}/{i}": launcher.wiring(stage, actors, collector)
        for stage, handles in actors.items() for i in handles
    }
    flat = _flat(actors)
    refs = [flat[name].connect.remote(w) for name, w in wirings.items()]
    asks = {spec.name: {"CPU": spec.num_cpus, "GPU": spec.num_gpus, **spec.resources_dict} for spec in compiled.stages}
    try:  # also surfaces constructor failures (bad model path ...)
        wait_placed(refs, [flat[n] for n in wirings], [f"replica {compiled.name}/{n}" for n in wirings],
                    [asks[n.split("/")[0]] for n in wirings], placement_timeout)
    except Exception:
        for stage, handles in actors.items():
            for i, a in handles.items():
                ray.kill(a)
                launcher.release(stage, i)
        ray.kill(collector)
        if coordinator is not None:
            ray.kill(coordinator)
        raise
    if coordinator is not None:
        sources = [f"{compiled.source}/{i}" for i in actors[compiled.source]]
        ray.get(coordinator.start.remote(_flat(actors), sources, wirings, launcher.migration_plan(actors, collector)))
    runs = {f"{compiled.name}/{name}": [a.run.remote()] for name, a in _flat(actors).items()}
    watch = collector.watch.remote(runs)
    log = None
    if request_log is not None:
        from tideflow.runtime.recovery.request_log import RequestLog

        models = [compiled.configs[s.name].model.model for s in compiled.stages if compiled.configs[s.name].engine]
        log = RequestLog(request_log, {"graph": compiled.name, "model": models[0] if models else None})
    return GraphHandle(
        compiled, actors, collector, runs, watch, coordinator=coordinator, recovery=config, launcher=launcher, request_log=log
    )


def migration_limits(compiled, override: int | None = None) -> dict[str, int]:
    """stage -> how often one of its requests may move, for the stages whose role migrates and
    whose limit (`override`, else the stage's `migration_limit` option, else the default) is
    above 0. Whether a stage migrates now also needs 2+ replicas (`ReplicaLauncher`)."""
    from tideflow.runtime.dataflow.stage_config import DEFAULT_MIGRATION_LIMIT

    if override is not None and (isinstance(override, bool) or not isinstance(override, int) or override < 0):
        raise ValueError(f"migration_limit must be an integer >= 0, got {override!r}")
    limits = {}
    for spec in compiled.stages:
        own = compiled.configs[spec.name].stage.migration_limit
        limit = override if override is not None else (own if own is not None else DEFAULT_MIGRATION_LIMIT)
        if compiled.roles[spec.name].migratable and limit > 0:
            limits[spec.name] = limit
    return limits


def _flat(actors: dict) -> dict:
    """"stage/replica" -> handle."""
    return {f"{stage}/{i}": a for stage, handles in actors.items() for i, a in handles.items()}


class ReplicaLauncher:
    """Starts stage replicas and builds their wiring; kept by the handle for rescaling."""

    def __init__(self, compiled, stage_cls, recovery, inbox_size: int | None, coordinator=None, limits=None):
        import ray

        self.compiled = compiled
        self.limits = dict(limits or {})  # stage -> migration limit, for the stages that may migrate
        self.remote_cls = ray.remote(stage_cls)
        self.recovery = recovery  # RecoveryConfig, None: off
        self.inbox_size = inbox_size
        self.coordinator = coordinator  # the checkpoint coordinator every replica reports to (None: recovery off)
        self.groups: dict[tuple[str, int], object] = {}  # (stage, replica) -> its placement group

    def start(self, stage: str, replica: int):
        spec = self.compiled.stage(stage)
        queue = self.inbox_size or max((e.queue_size for e in self.compiled.edges if e.dst == stage), default=8)
        restarts = self.recovery.max_restarts if self.recovery is not None else 0
        opts = dict(
            namespace=NAMESPACE, num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, resources=spec.resources_dict,
            max_concurrency=64, max_restarts=restarts, max_task_retries=-1 if restarts else 0,
        )
        name = f"{self.compiled.name}/{stage}/{replica}"
        self.release(stage, replica)  # a replica index handed out again (rescale) gets a fresh group
        placement, group = replica_placement(spec, name)
        if group is not None:
            self.groups[(stage, replica)] = group
        # a sharded stage's engine config has tensor_parallel_size = shards (compile set it): its
        # role starts shards - 1 rank actors beside itself (tideflow.runtime.parallel.sharded_runner)
        context = self.compiled.context(stage, replica)
        return self.remote_cls.options(name=name, **opts, **placement).remote(
            role_target(self.compiled.roles[stage]), context, queue, self.recovery,
            None if self.coordinator is None else (coordinator_name(self.compiled.name), NAMESPACE),
        )

    def release(self, stage: str, replica: int) -> None:
        """Give back the placement group of a replica that was killed (sharded stages only)."""
        release(self.groups.pop((stage, replica), None))

    def migrating(self, actors: dict) -> dict[str, int]:
        """stage -> migration limit, for the stages that migrate with the replicas in `actors`."""
        return {stage: limit for stage, limit in self.limits.items() if len(actors[stage]) >= 2}

    def migration_plan(self, actors: dict, collector):
        """What the coordinator's migrator needs (None when no stage migrates)."""
        from tideflow.runtime.recovery.migration import MigrationPlan

        limits = self.migrating(actors)
        if not limits:
            return None
        compiled = self.compiled
        upstream = {s: [f"{u}/{i}" for u in compiled.upstream(s) for i in actors[u]] for s in limits}
        return MigrationPlan(limits, upstream, {s: compiled.roles[s].consumes for s in limits}, collector)

    def wiring(self, stage: str, actors: dict, collector) -> Wiring:
        compiled = self.compiled
        downstream = compiled.downstream(stage)
        return Wiring(
            downstream={d: list(actors[d].values()) for d in downstream},
            routing={d: compiled.roles[d].routing for d in downstream},
            upstream={u: dict(actors[u]) for u in compiled.upstream(stage)},
            sink=collector if stage == compiled.sink else None,
            collector=collector,
            block_size=compiled.configs[stage].kv_block_size,
            replica_ids={d: list(actors[d]) for d in downstream},
            migrating=frozenset(d for d in downstream if d in self.migrating(actors)),
        )


class GraphHandle:
    """A deployed graph: `generate` (like `LLM.generate`), `submit` (streaming), `stats`, `shutdown`."""

    def __init__(
        self, compiled, actors, collector, runs, watch, *, coordinator=None, recovery=None, launcher=None, request_log=None
    ):
        self.graph = compiled
        self._replicas = actors  # stage -> {replica index -> handle}
        self.collector = collector
        self.coordinator = coordinator  # the checkpoint coordinator (None: recovery off)
        self.recovery = recovery
        self._launcher = launcher
        self._request_log = request_log  # RequestLog: finished requests recorded for replay
        self._runs = runs
        self._watch = watch
        source = compiled.stage(compiled.source)
        self._router = Router(source.replicas, compiled.roles[source.name].routing)
        self._new_id_prefix()
        self._next_index: dict[str, int] = {}  # stage -> next replica index a rescale hands out
        self._closed = False

    @property
    def actors(self) -> dict[str, list]:
        """stage -> the handles of its replicas now serving."""
        return {stage: list(handles.values()) for stage, handles in self._replicas.items()}

    # -- requests -----------------------------------------------------------------------------
    def _new_id_prefix(self) -> None:
        self._id_prefix = f"{self.graph.name}-{uuid.uuid4().hex[:8]}"
        self._ids = itertools.count()
        self._streams: DeltaStreams | None = None  # this copy's streams, one collector call for all

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_streams": None}  # its queues and pump belong to this process

    def __setstate__(self, state: dict) -> None:
        """A copy sent to another process (a batch actor, a Serve replica) draws request ids
        under its own prefix, so copies sharing the graph never hand out the same id."""
        self.__dict__.update(state)
        self._new_id_prefix()

    def _new_ids(self, count: int) -> list[str]:
        return [f"{self._id_prefix}-{next(self._ids)}" for _ in range(count)]

    def _ingest_refs(self, rows: list[dict]) -> list:
        sources = self.actors[self.graph.source]
        return [sources[r].push.remote(part) for r, part in self._router.split(request_batch(rows)).items()]

    def generate(self, prompts, sampling_params=None) -> list[RequestOutput]:
        """Run every prompt to completion; outputs in prompt order. A request that fails inside
        the graph (bad input, a dead stage) raises RequestError (a ValueError) after the rest finish."""
        import ray

        prompts, params = normalize(prompts, sampling_params)
        ids = self._new_ids(len(prompts))
        rows = [request_row(rid, p, sp) for rid, p, sp in zip(ids, prompts, params)]
        ray.get(self.collector.register.remote([(r["request_id"], r.get("prompt"), sp.n) for r, sp in zip(rows, params)]))
        ray.get(self._ingest_refs(rows))
        results = ray.get(self.collector.collect.remote(ids))
        if self._request_log is not None:
            done = [(row, r) for row, r in zip(rows, results) if not isinstance(r, str)]
            self._request_log.append([d[0] for d in done], [d[1] for d in done])
        errors = [r for r in results if isinstance(r, str)]
        if errors:
            raise RequestError(f"{len(errors)} of {len(results)} requests failed; first: {errors[0]}")
        return results

    async def submit(self, prompt, sampling_params=None) -> AsyncIterator[RequestOutput]:
        """Stream one request: yields its cumulative output (a fresh copy) each time it grows;
        the last one is finished. Closing the iterator early aborts the request."""
        (prompt,), (params,) = normalize(prompt, sampling_params)
        text = prompt if isinstance(prompt, str) else prompt.get("prompt")
        out = None
        async with aclosing(self.submit_deltas(prompt, params)) as deltas:
            async for delta in deltas:
                if out is None:
                    out = empty_output(delta.request_id, text, params.n)
                delta.apply_to(out)
                yield copy_output(out)

    async def submit_deltas(self, prompt, sampling_params=None) -> AsyncIterator[OutputDelta]:
        """Stream one request as what is new each time it grows (`OutputDelta`: new tokens,
        text and logprobs per completion), as the collector sends it: nothing cumulative is
        rebuilt on the way to a client (the server writes SSE chunks straight from these).
        The last delta is `finished`. Closing the iterator early aborts the request."""
        (prompt,), (params,) = normalize(prompt, sampling_params)
        (rid,) = self._new_ids(1)
        row = request_row(rid, prompt, params)
        if self._streams is None:
            self._streams = DeltaStreams(self.collector, self._id_prefix)
        queue = self._streams.open(rid)  # before registering: no delta can arrive unseen
        log = None if self._request_log is None else empty_output(rid, row.get("prompt"), params.n)
        finished = False
        try:
            await self.collector.register.remote([(rid, row.get("prompt"), params.n)], self._id_prefix)
            await asyncio.gather(*self._ingest_refs([row]))
            while not finished:
                delta = await queue.get()
                if delta is None:  # cancelled meanwhile (abort from elsewhere)
                    return
                if isinstance(delta, str):
                    raise RequestError(delta)
                finished = delta.finished
                if log is not None:
                    delta.apply_to(log)
                    if finished:
                        self._request_log.append([row], [log])
                yield delta
        finally:
            self._streams.close(rid)
            if not finished:
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        """Stop a request everywhere it may be (e.g. its client went away)."""
        for handles in self.actors.values():
            for a in handles:
                a.abort.remote([(request_id, None)])
        self.collector.cancel.remote(request_id)

    # -- operations ---------------------------------------------------------------------------
    def stats(self) -> dict:
        """Per stage, per replica: engine counters (running, waiting, KV usage, prefix hits),
        load and inbox depth; plus the collector's view."""
        import ray

        names = [(s, i, a) for s, handles in self.actors.items() for i, a in enumerate(handles)]
        values = ray.get([a.stats.remote() for _, _, a in names])
        stats: dict = {s: [None] * len(h) for s, h in self.actors.items()}
        for (s, i, _), v in zip(names, values):
            stats[s][i] = v
        stats["collector"] = ray.get(self.collector.status.remote())
        return stats

    def checkpoints(self) -> dict:
        """The coordinator's view: completed and aborted checkpoint ids, the open one,
        restarts per replica. Empty when recovery is off."""
        import ray

        return ray.get(self.coordinator.status.remote()) if self.coordinator is not None else {}

    def checkpoint(self, timeout: float = 60.0) -> int:
        """Take a checkpoint now and wait until it completes; returns its id."""
        import time

        import ray

        if self.coordinator is None:
            raise ValueError("recovery: this graph was deployed with recovery=False")
        deadline = time.monotonic() + timeout
        while (cid := ray.get(self.coordinator.trigger.remote())) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("a checkpoint stayed open")
            time.sleep(0.05)
        while cid not in self.checkpoints()["completed"]:
            if cid in self.checkpoints()["aborted"] or time.monotonic() > deadline:
                raise TimeoutError(f"checkpoint {cid} did not complete")
            time.sleep(0.05)
        return cid

    def rescale(self, stage: str, replicas: int, timeout: float = 120.0) -> None:
        """Change the number of replicas of `stage` while traffic flows; see `tideflow.runtime.dataflow.rescale`."""
        from tideflow.runtime.dataflow.rescale import rescale

        rescale(self, stage, replicas, timeout)

    def autoscale(self, stage: str, policy=None, period_s: float = 2.0):
        """Scale `stage` by an `AutoscalePolicy` (queue depth, KV usage, min/max replicas) on
        a background thread; returns the `Autoscaler` (call its `stop()`)."""
        from tideflow.runtime.dataflow.rescale import Autoscaler, AutoscalePolicy

        return Autoscaler(self, stage, policy or AutoscalePolicy(), period_s)

    def shutdown(self) -> None:
        import ray

        if self._closed:
            return
        self._closed = True
        ray.get(self.collector.close.remote())
        if self.coordinator is not None:
            ray.get(self.coordinator.close.remote())
        handles = [a for hs in self.actors.values() for a in hs]
        # Wait for the stop calls too, not only the run loops: killing an actor with a stop
        # call still in flight makes the raylet log it as a failed (retried) task.
        pending = [a.stop.remote() for a in handles] + [r[0] for r in self._runs.values()]
        ray.wait(pending, num_returns=len(pending), timeout=30)
        for a in handles:
            ray.kill(a)
        if self._launcher is not None:
            for stage, replica in list(self._launcher.groups):
                self._launcher.release(stage, replica)
        ray.kill(self.collector)
        if self.coordinator is not None:
            ray.kill(self.coordinator)
        if self._request_log is not None:
            self._request_log.close()
        if self.recovery is not None and self.recovery.owns_dir:
            from tideflow.runtime.recovery.checkpoint_store import CheckpointStore

            CheckpointStore(self.recovery.checkpoint_dir).delete_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
