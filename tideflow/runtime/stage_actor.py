"""The Ray actor that hosts one replica of a stage.

It owns a bounded inbox, runs the role's loop on one thread (`run`, started once by the
executor and returning only at shutdown, so its ObjectRef tells the executor when the actor
dies), and sends what the role emits to the replicas downstream, chosen by one router per
edge. Input moves from the inbox into the role only while the role is `accepting`; a full
inbox blocks `push`, and since producers wait for `push` to return, a slow stage pushes back
on everything upstream. Nothing is dropped.

Sending is pipelined so that the role's next step overlaps the previous emission's round
trip: each destination (a downstream replica, or the sink) has at most one push in flight,
awaited just before the next push to it and before the loop idles. Backpressure still holds,
one emission later, and batches reach each destination in order, which Ray does not promise
by itself for threaded or async actors (both ends here are).

Large attachments (prefill's KV) are put in the Ray object store once and travel as object
references beside the Arrow batch; the receiving replica resolves them (zero-copy numpy on
the same node).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from tideflow.actors.base import AbortUpstream, Emission, StageContext, resolve_role
from tideflow.actors.router import Router


@dataclass(slots=True)
class Wiring:
    """Who a replica talks to; decided once by the executor."""

    downstream: dict  # stage -> [actor handle per replica]
    routing: dict  # stage -> routing policy of its role
    upstream: dict  # stage -> [actor handle per replica] (aborts go there)
    sink: object | None  # the collector, when this stage is the graph's sink
    collector: object = None  # the collector: told of requests that cannot go on (a dead replica downstream)
    block_size: int = 16


@dataclass(slots=True)
class _Push:
    """A push on its way to one destination."""

    ref: Any  # ObjectRef of the push call: its load, or the receiver's death
    batch: pa.RecordBatch  # the rows sent: failed explicitly if the receiver turns out dead


_SINK = ("", 0)  # the destination key of the sink; downstream replicas are (stage, replica)


class StageActor:
    def __init__(self, role: str | type, context: StageContext, inbox_size: int):
        import warnings

        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.context = context
        self.role = resolve_role(role)(context)
        self.inbox_size = inbox_size
        self.cv = threading.Condition()
        self.inbox: deque = deque()  # (batch, attachment refs), bounded by inbox_size
        self.control: deque = deque()  # (handler, payload): never bounded, never blocks
        self.stopped = False
        self.wiring: Wiring | None = None
        self.routers: dict[str, Router] = {}
        self.load = 0
        self.max_inbox = 0  # the deepest the inbox has been
        self.batches_in = self.batches_out = 0
        self.busy_s = 0.0
        self.handlers = {"abort": self.role.abort}  # control message -> handler
        self.in_flight: dict[tuple[str, int], _Push] = {}  # destination -> its unawaited push (loop thread only)

    # -- called by the executor and by other actors (any thread) ------------------------------
    def connect(self, wiring: Wiring) -> bool:
        self.wiring = wiring
        self.routers = {
            stage: Router(len(handles), wiring.routing[stage], block_size=wiring.block_size)
            for stage, handles in wiring.downstream.items()
        }
        return True

    def push(self, batch, attachments=None) -> int:
        """Queue one input batch, blocking while the inbox is full. Returns this replica's load."""
        with self.cv:
            while len(self.inbox) >= self.inbox_size and not self.stopped:
                self.cv.wait()
            self.inbox.append((batch, attachments))
            self.max_inbox = max(self.max_inbox, len(self.inbox))
            self.cv.notify_all()
            return self.load + len(self.inbox)

    def abort(self, targets) -> None:
        with self.cv:
            self.control.append(("abort", targets))
            self.cv.notify_all()

    def stop(self) -> None:
        with self.cv:
            self.stopped = True
            self.cv.notify_all()

    def stats(self) -> dict:
        with self.cv:
            queued = len(self.inbox)
        return {
            **self.role.stats(),
            "load": self.load,
            "inbox": queued,
            "inbox_size": self.inbox_size,
            "max_inbox": self.max_inbox,
            "batches_in": self.batches_in,
            "batches_out": self.batches_out,
            "busy_s": self.busy_s,
        }

    def ready(self) -> str:
        return f"{self.context.graph}/{self.context.stage}/{self.context.replica}"

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        import ray

        role = self.role
        while (work := self._next_work()) is not None:
            control, taken = work
            start = time.perf_counter()
            for kind, payload in control:
                self.handlers[kind](payload)
            for batch, refs in taken:
                role.push(batch, dict(zip(refs, ray.get(list(refs.values())))) if refs else None)
                self.batches_in += 1
            items = role.poll()
            self.load = role.load()
            self.busy_s += time.perf_counter() - start
            self._send(items)
        role.close()

    def _idle(self) -> bool:
        """Nothing to do (the caller holds `cv`)."""
        role = self.role
        return not self.stopped and not self.control and not role.has_work() and not (self.inbox and role.accepting())

    def _next_work(self) -> tuple[list, list] | None:
        """Wait for control messages, input the role accepts, or work already inside it; take
        them. None once stopped. Before idling, the pushes still in flight are awaited, so a
        receiver that died is noticed (and its requests failed) even if nothing follows."""
        with self.cv:
            idle = self._idle()
        if idle:
            self._flush()
        with self.cv:
            while self._idle():
                self.cv.wait()
            if self.stopped:
                return None
            control = list(self.control)
            self.control.clear()
            taken = []
            while self.inbox and self.role.accepting() and len(taken) < self.inbox_size:
                taken.append(self.inbox.popleft())
            if taken:
                self.cv.notify_all()  # room in the inbox: wake blocked producers
            return control, taken

    # -- sending --------------------------------------------------------------------------------
    def _send(self, items) -> None:
        import ray

        wiring = self.wiring
        for item in items:
            if isinstance(item, AbortUpstream):
                for handles in wiring.upstream.values():
                    handles[item.producer].abort.remote(item.targets)
                continue
            assert isinstance(item, Emission)
            self.batches_out += 1
            if wiring.sink is not None:
                self._settle(_SINK)
                self.in_flight[_SINK] = _Push(wiring.sink.push.remote(item.batch), item.batch)
                continue
            refs = {k: ray.put(v) for k, v in item.attachments.items()} if item.attachments else None
            for stage in wiring.downstream:
                self._route(stage, item.batch, refs)

    def _route(self, stage: str, batch: pa.RecordBatch, refs: dict | None) -> None:
        """Push `batch` to the replicas of `stage` its router picks, each once its previous push
        was accepted (backpressure, order). Rows picked for a replica that this wait finds dead
        go to the others, while any lives."""
        router, handles = self.routers[stage], self.wiring.downstream[stage]
        for replica, part in router.split(batch).items():
            if not self._settle((stage, replica)) and len(router.dead) < router.num_replicas:
                self._route(stage, part, refs)
                continue
            self.in_flight[(stage, replica)] = _Push(handles[replica].push.remote(part, _subset(refs, part)), part)

    def _settle(self, destination: tuple[str, int]) -> bool:
        """Wait for the push in flight to `destination`, if any. False when it found the
        replica dead: it is routed around from now on and the requests it was sent fail
        explicitly. The sink's failure is not caught: without it the graph cannot go on."""
        import ray

        push = self.in_flight.pop(destination, None)
        if push is None:
            return True
        if destination == _SINK:
            ray.get(push.ref)
            return True
        stage, replica = destination
        router = self.routers[stage]
        try:
            router.observe_load(replica, ray.get(push.ref))
        except ray.exceptions.RayActorError as exc:
            router.mark_dead(replica)
            rids = sorted(set(push.batch.column("request_id").to_pylist()))
            self.wiring.collector.fail.remote(rids, f"a downstream replica died: {type(exc).__name__}")
            return False
        return True

    def _flush(self) -> None:
        for destination in list(self.in_flight):
            self._settle(destination)


def _subset(refs: dict | None, batch) -> dict | None:
    """The attachment refs of the rows in `batch` (keys are "request_id/index")."""
    if not refs:
        return None
    rids = batch.column("request_id").to_pylist()
    index = batch.column("index").to_pylist() if "index" in batch.schema.names else [0] * len(rids)
    keys = (f"{r}/{i}" for r, i in zip(rids, index))
    return {k: refs[k] for k in keys if k in refs} or None
