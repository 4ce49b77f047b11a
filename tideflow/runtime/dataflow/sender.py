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

A downstream stage whose requests migrate (`Wiring.migrating`, docs/reliability.md fault 10)
is pushed to without Ray's retries, and its replicas can be down for a while: the checkpoint
coordinator says when one dies and when it is back (`set_alive`, from any thread; the router
follows with `apply_alive`, on the loop thread). A wait on a push to a replica that went down
gives up, and the rows of a push that found its replica dead go to a live one instead of
failing: what the dead replica had logged of them moves too, and a second copy is dropped
by `(request_id, seq)` downstream. Used by the replica's loop thread only (`idle` and
`set_alive` aside).
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
    refs: dict | None = None  # the attachments sent with them (a migrating stage's rows may go elsewhere)


SINK = ("", 0)  # the destination key of the sink; downstream replicas are (stage, position in its handles)
SETTLE_SLICE_S = 0.05  # a wait on a push to a migrating stage looks this often whether its replica went down


class Sender:
    """One replica's outgoing side: its routers and the push in flight to each destination."""

    def __init__(self, name: str):
        self.name = name  # "stage/replica": who this replica is to its receivers
        self.wiring: Wiring | None = None
        self.routers: dict[str, Router] = {}  # downstream stage -> its router
        self.in_flight: dict[tuple[str, int], _Push] = {}  # destination -> its unawaited push
        self.batches_out = 0  # emissions sent
        self._handlers: dict[type, Any] = {}  # item type -> how it is sent (bound by `connect`)
        self.pushes: dict[str, list] = {}  # downstream stage -> each replica's push method (bound by `connect`)
        # (stage, replica index) of downstream replicas the coordinator found down; written by
        # any thread (`set_alive`), read by the loop thread
        self.down: set[tuple[str, int]] = set()

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
        # a migrating stage's calls are not retried: one in flight when its replica dies fails
        # instead of waiting for the restart, and its rows go to a live replica
        self.pushes = {s: [h.push.options(max_task_retries=0) if s in wiring.migrating else h.push for h in handles]
                       for s, handles in wiring.downstream.items()}
        for stage, router in self.routers.items():
            for position in range(len(wiring.downstream[stage])):
                if (stage, wiring.replica_id(stage, position)) in self.down:
                    router.mark_dead(position)

    def set_alive(self, stage: str, replica: int, alive: bool) -> None:
        """Replica `replica` of the downstream `stage` is down (or back); any thread. A wait
        on a push to it gives up at once; the routers follow in `apply_alive`."""
        if alive:
            self.down.discard((stage, replica))
        else:
            self.down.add((stage, replica))

    def apply_alive(self, stage: str, replica: int, alive: bool) -> None:
        """Route around replica `replica` of `stage` (or to it again); loop thread."""
        router = self.routers.get(stage)
        if router is None:
            return
        for position in range(len(self.wiring.downstream[stage])):
            if self.wiring.replica_id(stage, position) == replica:
                if alive:
                    router.revive(position)
                else:
                    router.mark_dead(position)

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
            migrating = stage in self.wiring.migrating
            for replica, handle in enumerate(handles):
                self._settle((stage, replica))
                if migrating and replica in self.routers[stage].dead:
                    continue  # down: the checkpoint was aborted when it died
                barrier = handle.barrier.options(max_task_retries=0) if migrating else handle.barrier
                self.in_flight[(stage, replica)] = _Push(barrier.remote(checkpoint_id, self.name), None)

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
        router, pushes = self.routers[stage], self.pushes[stage]
        for replica, part in router.split(batch).items():
            if not self._settle((stage, replica)):
                if len(router.dead) < router.num_replicas:
                    self._route(stage, part, refs)
                    continue
                self._settle((stage, replica))  # none lives: a resend to it lands first (after its restart)
            sent = attachments.subset(refs, part)
            self.in_flight[(stage, replica)] = _Push(pushes[replica].remote(part, sent, self.name), part, sent)

    def _settle(self, destination: tuple[str, int]) -> bool:
        """Wait for the push in flight to `destination`, if any. False when it found the
        replica dead: it is routed around from now on and the requests it was sent fail
        explicitly, or, for a migrating stage, go to a live replica (also when the replica is
        found down while waiting). The sink's failure is not caught: without it the graph
        cannot go on."""
        import ray

        push = self.in_flight.pop(destination, None)
        if push is None:
            return True
        if destination == SINK:
            ray.get(push.ref)
            return True
        stage, replica = destination
        router = self.routers[stage]
        migrating = stage in self.wiring.migrating
        if migrating and not self._landed(push, stage, replica):
            try:
                ray.cancel(push.ref)  # still queued for the dead replica: it must not run there later
            except Exception:  # noqa: BLE001 - best effort: a copy that runs anyway is dropped downstream
                pass
            router.mark_dead(replica)
            self._resend(stage, replica, push)
            return False
        try:
            router.observe_load(replica, ray.get(push.ref))
        except ray.exceptions.RayActorError as exc:
            router.mark_dead(replica)
            if migrating:
                self._resend(stage, replica, push)
            elif push.batch is not None:  # (a lost barrier: the coordinator aborts the checkpoint on its own)
                self._fail(push.batch, type(exc).__name__)
            return False
        return True

    def _landed(self, push: _Push, stage: str, position: int) -> bool:
        """Wait for `push` to the replica at `position` of `stage` until it is done (True), or
        until that replica is found down while another one of the stage is not (False)."""
        import ray

        wiring = self.wiring
        me = (stage, wiring.replica_id(stage, position))
        while not ray.wait([push.ref], timeout=SETTLE_SLICE_S)[0]:
            if me in self.down and any((stage, wiring.replica_id(stage, p)) not in self.down
                                       for p in range(len(wiring.downstream[stage]))):
                return False
        return True

    def _resend(self, stage: str, position: int, push: _Push) -> None:
        """The replica at `position` of `stage` died with `push` in flight: its rows go to a
        live replica, or, when none lives, to that one again once Ray has restarted it (with
        retries; what it logged before is recognised and dropped). A barrier is dropped: the
        coordinator aborts the checkpoint."""
        if push.batch is None:
            return
        router = self.routers[stage]
        if len(router.dead) < router.num_replicas:
            self._route(stage, push.batch, push.refs)
            return
        handle = self.wiring.downstream[stage][position]
        self.in_flight[(stage, position)] = _Push(handle.push.remote(push.batch, push.refs, self.name), push.batch, push.refs)

    def _fail(self, batch: pa.RecordBatch, why: str) -> None:
        rids = sorted(set(batch.column("request_id").to_pylist()))
        self.wiring.collector.fail.remote(rids, f"a downstream replica died: {why}")
