"""What a stage replica emits, on its way downstream: routing, pipelined pushes, failover.

Each `Emission` of the role goes to the graph's sink (the collector) when the replica's stage
is the sink, else to every downstream stage, split over its replicas by one router per stage;
an `AbortUpstream` goes to the replica upstream that produced the rows. Which of the two
emission paths a replica takes is bound once per wiring, not decided per batch.

Sending is pipelined so that the role's next step overlaps the previous emission's round
trip: each destination (a downstream replica, or the sink) has at most one push in flight,
awaited just before the next push to it (and, by the host, before its loop idles).
Backpressure still holds, one emission later, and batches reach each destination in order,
which Ray does not promise by itself for threaded or async actors (both ends here are).

A push that finds its receiver dead fails the requests it carried (the collector is told)
and the router routes around that replica from then on, while any replica of the stage lives.
Used by the replica's loop thread only (`idle` aside).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from tideflow.runtime.dataflow import attachments
from tideflow.runtime.dataflow.role import AbortUpstream, Emission
from tideflow.runtime.dataflow.router import Router
from tideflow.runtime.dataflow.wiring import Wiring


@dataclass(slots=True)
class _Push:
    """A push on its way to one destination."""

    ref: Any  # ObjectRef of the push call: its load, or the receiver's death
    batch: pa.RecordBatch | None  # the rows sent: failed explicitly if the receiver turns out dead (None: a barrier)


SINK = ("", 0)  # the destination key of the sink; downstream replicas are (stage, replica)


class Sender:
    """One replica's outgoing side: its routers and the push in flight to each destination."""

    def __init__(self, name: str):
        self.name = name  # "stage/replica": who this replica is to its receivers
        self.wiring: Wiring | None = None
        self.routers: dict[str, Router] = {}  # downstream stage -> its router
        self.in_flight: dict[tuple[str, int], _Push] = {}  # destination -> its unawaited push
        self.batches_out = 0  # emissions sent
        self._handlers: dict[type, Any] = {}  # item type -> how it is sent (bound by `connect`)

    def connect(self, wiring: Wiring) -> None:
        """Take a new wiring: fresh routers, and the emission path of this replica's place in
        the graph (the sink, or stages downstream). Pushes in flight must have landed."""
        self.wiring = wiring
        self.routers = {
            stage: Router(len(handles), wiring.routing[stage], block_size=wiring.block_size)
            for stage, handles in wiring.downstream.items()
        }
        emit = self._to_sink if wiring.sink is not None else self._to_downstream
        self._handlers = {Emission: emit, AbortUpstream: self._abort_upstream}

    def send(self, items: list) -> None:
        """Send what the role's `poll` returned (Emission and AbortUpstream items), in order."""
        handlers = self._handlers
        for item in items:
            handlers[type(item)](item)

    def idle(self) -> bool:
        """No push in flight."""
        return not self.in_flight

    def flush(self) -> None:
        """Wait for every push in flight."""
        for destination in list(self.in_flight):
            self._settle(destination)

    def forward_barrier(self, checkpoint_id: int) -> None:
        """Send barrier `checkpoint_id` to every downstream replica, each behind the push in
        flight to it (so it follows everything sent before it)."""
        for stage, handles in self.wiring.downstream.items():
            for replica, handle in enumerate(handles):
                self._settle((stage, replica))
                self.in_flight[(stage, replica)] = _Push(handle.barrier.remote(checkpoint_id, self.name), None)

    # -- the two emission paths, and aborts ----------------------------------------------------
    def _to_sink(self, item: Emission) -> None:
        self.batches_out += 1
        self._settle(SINK)
        self.in_flight[SINK] = _Push(self.wiring.sink.push.remote(item.batch), item.batch)

    def _to_downstream(self, item: Emission) -> None:
        self.batches_out += 1
        refs = attachments.put(item.attachments)
        for stage in self.wiring.downstream:
            self._route(stage, item.batch, refs)

    def _abort_upstream(self, item: AbortUpstream) -> None:
        for handles in self.wiring.upstream.values():
            handles[item.producer].abort.remote(item.targets)

    def _route(self, stage: str, batch: pa.RecordBatch, refs: dict | None) -> None:
        """Push `batch` to the replicas of `stage` its router picks, each once its previous push
        was accepted (backpressure, order). Rows picked for a replica that this wait finds dead
        go to the others, while any lives."""
        router, handles = self.routers[stage], self.wiring.downstream[stage]
        for replica, part in router.split(batch).items():
            if not self._settle((stage, replica)) and len(router.dead) < router.num_replicas:
                self._route(stage, part, refs)
                continue
            self.in_flight[(stage, replica)] = _Push(
                handles[replica].push.remote(part, attachments.subset(refs, part), self.name), part
            )

    def _settle(self, destination: tuple[str, int]) -> bool:
        """Wait for the push in flight to `destination`, if any. False when it found the
        replica dead: it is routed around from now on and the requests it was sent fail
        explicitly. The sink's failure is not caught: without it the graph cannot go on."""
        import ray

        push = self.in_flight.pop(destination, None)
        if push is None:
            return True
        if destination == SINK:
            ray.get(push.ref)
            return True
        stage, replica = destination
        router = self.routers[stage]
        try:
            router.observe_load(replica, ray.get(push.ref))
        except ray.exceptions.RayActorError as exc:
            router.mark_dead(replica)
            if push.batch is None:  # a barrier: the coordinator aborts the checkpoint on its own
                return False
            rids = sorted(set(push.batch.column("request_id").to_pylist()))
            self.wiring.collector.fail.remote(rids, f"a downstream replica died: {type(exc).__name__}")
            return False
        return True
