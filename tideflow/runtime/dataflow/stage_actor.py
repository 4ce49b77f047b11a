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

With recovery on (`RecoveryConfig`), every input is appended to the replica's input log
before `push` returns, tagged with the id of the last barrier its sender delivered (its
epoch). Barriers arrive through `push` like batches; a replica with several senders aligns
them (input from a sender whose barrier came is held back until every sender's has), then
flushes its sends, snapshots its role, forwards the barrier downstream and acknowledges to
the coordinator. Ray restarts a crashed replica (`max_restarts`) and retries the calls it
was running (`max_task_retries`), `run` included: the constructor then fetches the wiring,
restores the last completed checkpoint and queues the logged inputs of later epochs in
front of anything new. Epochs and alignment: `tideflow.runtime.recovery.barriers`; settings
`tideflow.runtime.recovery.settings`; fault injection: `tideflow.runtime.recovery.faults`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from tideflow.runtime.dataflow.role import AbortUpstream, Emission, StageContext, import_role
from tideflow.runtime.dataflow.router import Router
from tideflow.runtime.recovery.barriers import INGRESS, Barrier, BarrierAligner

def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _process_start() -> float | None:
    """Wall-clock time this worker process started (psutil ships with Ray)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - a missing figure must not stop a replica
        return None


@dataclass(slots=True)
class _Entry:
    """One inbox item."""

    batch: Any  # pa.RecordBatch, or a Barrier
    refs: dict | None  # attachment key -> ObjectRef
    sender: str  # "stage/replica" of the upstream replica, or INGRESS


@dataclass(slots=True)
class Wiring:
    """Who a replica talks to; decided once by the executor."""

    downstream: dict  # stage -> [actor handle per replica]
    routing: dict  # stage -> routing policy of its role
    upstream: dict  # stage -> [actor handle per replica] (aborts go there)
    sink: object | None  # the collector, when this stage is the graph's sink
    collector: object = None  # the collector: told of requests that cannot go on (a dead replica downstream)
    block_size: int = 16
    coordinator: object = None  # the checkpoint coordinator, when recovery is on


@dataclass(slots=True)
class _Push:
    """A push on its way to one destination."""

    ref: Any  # ObjectRef of the push call: its load, or the receiver's death
    batch: pa.RecordBatch | None  # the rows sent: failed explicitly if the receiver turns out dead (None: a barrier)


_SINK = ("", 0)  # the destination key of the sink; downstream replicas are (stage, replica)


class StageActor:
    def __init__(self, role: str, context: StageContext, inbox_size: int, recovery=None):
        import warnings

        init_at = time.time()
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.context = context
        self.name = f"{context.stage}/{context.replica}"  # this replica's sender name downstream
        self.node_id = _node_id()  # the Ray node this replica runs on (in `stats`)
        role_cls = import_role(role)  # `role_target` of the class: torch, transformers for model roles
        role_at = time.time()
        self.role = role_cls(context)
        # where a (re)start spends its time: process start -> __init__ (Ray's worker start),
        # the role's imports, its construction (model load, KV cache), then `restore_s`
        self.startup = {"process_at": _process_start(), "init_at": init_at, "role_import_s": role_at - init_at,
                        "role_init_s": time.time() - role_at}
        self.inbox_size = inbox_size
        self.cv = threading.Condition()
        self.inbox: deque[_Entry] = deque()  # bounded by inbox_size (held-back entries aside)
        self.control: deque = deque()  # (handler, payload): never bounded, never blocks
        self.stopped = False
        self.wiring: Wiring | None = None
        self.routers: dict[str, Router] = {}
        self.load = 0
        self.max_inbox = 0  # the deepest the inbox has been
        self.batches_in = self.batches_out = 0
        self.busy_s = 0.0
        self.handlers = {"abort": self.role.abort, "rewire": self._rewire}  # control message -> handler
        self.in_flight: dict[tuple[str, int], _Push] = {}  # destination -> its unawaited push (loop thread only)
        # checkpoints: see the module docstring
        self.recovery = recovery
        self.barriers = BarrierAligner()  # epochs and alignment (under cv)
        self.due: int | None = None  # snapshot to take once the taken input is processed
        self.asked = False  # asked the coordinator for a checkpoint since the last one
        self.replayed = 0  # logged inputs queued again after a restart
        self.restore_s = 0.0  # seconds the last restart spent restoring and reading the log
        self.log = self.store = self.faults = None
        self.sender: tuple = (self.name,) if recovery is not None else ()  # who we are to receivers (only checkpoints ask)
        if recovery is not None:
            import ray

            from tideflow.runtime.recovery.checkpoint_store import CheckpointStore, replica_name
            from tideflow.runtime.recovery.faults import FaultInjector

            self.store = CheckpointStore(recovery.checkpoint_dir)
            self.file_name = replica_name(context.stage, context.replica)
            self.faults = FaultInjector(recovery.faults, context.stage, context.replica, self.store)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reconstructed = ray.get_runtime_context().was_current_actor_reconstructed
            if reconstructed:
                self._recover()
            else:
                self.log = self.store.log_writer(self.file_name, self.store.next_part(self.file_name))

    # -- called by the executor and by other actors (any thread) ------------------------------
    def connect(self, wiring: Wiring) -> bool:
        self.wiring = wiring
        self.routers = {
            stage: Router(len(handles), wiring.routing[stage], block_size=wiring.block_size)
            for stage, handles in wiring.downstream.items()
        }
        with self.cv:
            self.barriers.set_senders({f"{stage}/{i}" for stage, hs in wiring.upstream.items() for i in _indices(hs)})
        return True

    def push(self, batch, attachments=None, sender: str = INGRESS) -> int:
        """Queue one input batch (or a Barrier), blocking while the inbox is full. With
        recovery on, the batch is in the input log when this returns. Returns this replica's load."""
        with self.cv:
            if isinstance(batch, Barrier):
                self.barriers.delivered(sender, batch.checkpoint_id)
                self.inbox.append(_Entry(batch, None, sender))
                self.cv.notify_all()
                return self.load + len(self.inbox)
            while self._queued() >= self.inbox_size and not self.stopped:
                self.cv.wait()
            ask = False
            if self.log is not None:
                self.log.append(self.barriers.epoch(sender), sender, batch)
                ask = not self.asked and self.log.num_batches >= self.recovery.interval_batches
                self.asked |= ask
            self.inbox.append(_Entry(batch, attachments, sender))
            self.max_inbox = max(self.max_inbox, len(self.inbox))
            self.cv.notify_all()
            load = self.load + len(self.inbox)
        if ask:
            self.wiring.coordinator.request.remote(self.name)
        return load

    def _queued(self) -> int:
        """Inbox entries that count against its bound: not those held back for alignment
        (a sender that delivered its barrier must not block the others from delivering theirs)."""
        if not self.barriers.arrived:
            return len(self.inbox)
        return sum(1 for e in self.inbox if not self.barriers.held(e.sender))

    def abort_checkpoint(self, checkpoint_id: int) -> None:
        """The coordinator gave up on this checkpoint: stop aligning it, ignore its barriers."""
        with self.cv:
            self.barriers.abort(checkpoint_id)
            self.cv.notify_all()

    def rewire(self, wiring: Wiring, timeout: float = 60.0) -> bool:
        """Replace the replica's wiring (a rescale) between two steps of its loop, after the
        pushes in flight under the old one have landed. Returns once done (False: timed out)."""
        done = threading.Event()
        with self.cv:
            self.control.append(("rewire", (wiring, done)))
            self.cv.notify_all()
        return done.wait(timeout)

    def _rewire(self, payload: tuple) -> None:
        wiring, done = payload
        self._flush()
        self.connect(wiring)
        done.set()

    def drained(self) -> bool:
        """Holds nothing: no input queued, no work in the role, no send in flight."""
        with self.cv:
            return not self.inbox and not self.role.has_work() and self.role.load() == 0 and not self.in_flight

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
            "replayed": self.replayed,
            "restore_s": self.restore_s,
            "startup": self.startup,
            "node_id": self.node_id,
        }

    def ready(self) -> str:
        return f"{self.context.graph}/{self.context.stage}/{self.context.replica}"

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        role = self.role
        while (work := self._next_work()) is not None:
            control, taken = work
            due, self.due = self.due, None  # set by `_take` on this thread
            start = time.perf_counter()
            for kind, payload in control:
                self.handlers[kind](payload)
            for entry in taken:
                role.push(entry.batch, _resolve(entry.refs))
                self.batches_in += 1
                if self.faults is not None:
                    self.faults.check("process")
            items = role.poll()
            self.load = role.load()
            self.busy_s += time.perf_counter() - start
            self._send(items)
            if due is not None:
                self._checkpoint(due)
        if self.faults is not None:
            self.faults.check("close")
        role.close()
        if self.log is not None:
            self.log.close()

    def _idle(self) -> bool:
        """Nothing to do (the caller holds `cv`)."""
        role = self.role
        if self.stopped or self.control or role.has_work():
            return False
        return not any(isinstance(e.batch, Barrier) or role.accepting() for e in self.inbox if not self.barriers.held(e.sender))

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
            taken = self._take()
            self.cv.notify_all()  # room in the inbox: wake blocked producers
            return control, taken

    def _take(self) -> list[_Entry]:
        """Input for the role, in order, as far as it accepts it; barriers met on the way are
        aligned, and once the last one needed is met nothing after it is taken (the caller
        holds `cv`)."""
        accepting = self.role.accepting()
        taken, held = [], []
        while self.inbox:
            entry = self.inbox[0]
            if self.barriers.held(entry.sender):  # after its sender's barrier: wait for the others
                held.append(self.inbox.popleft())
                continue
            if isinstance(entry.batch, Barrier):
                self.inbox.popleft()
                self.due = self.barriers.met(entry.sender, entry.batch.checkpoint_id)
                if self.due is not None:
                    break
                continue
            if not accepting or len(taken) >= self.inbox_size:
                break
            taken.append(self.inbox.popleft())
        self.inbox.extendleft(reversed(held))
        return taken

    # -- checkpoints ----------------------------------------------------------------------------
    def _checkpoint(self, checkpoint_id: int) -> None:
        """Everything before the barrier is processed and sent: make the sends durable
        downstream, snapshot, pass the barrier on, acknowledge."""
        self._flush()
        state = {"role": self.role.snapshot(), "batches_in": self.batches_in}
        self.store.write_snapshot(checkpoint_id, self.file_name, state)
        self.faults.check("snapshot")  # a crash here leaves the checkpoint incomplete
        with self.cv:
            self.barriers.snapshotted(checkpoint_id)
            self.asked = False
            self.log.close_before(checkpoint_id)
        for stage, handles in self.wiring.downstream.items():
            for replica, handle in enumerate(handles):
                self._settle((stage, replica))
                self.in_flight[(stage, replica)] = _Push(handle.push.remote(Barrier(checkpoint_id), None, self.name), None)
        self.wiring.coordinator.ack.remote(checkpoint_id, self.name)

    def _recover(self) -> None:
        """Ray restarted this replica: fetch the wiring, restore the last completed
        checkpoint, queue the inputs logged since, and tell the coordinator."""
        import ray

        from tideflow.runtime.dataflow.executor import NAMESPACE

        start = time.perf_counter()
        coordinator = ray.get_actor(f"{self.context.graph}/checkpoints", namespace=NAMESPACE)
        self.connect(ray.get(coordinator.wiring.remote(self.name)))
        ray.get(coordinator.restarted.remote(self.name))  # aborts the open checkpoint: it may lack our barrier
        cid = self.store.latest_complete()
        state = self.store.read_snapshot(cid, self.file_name) if cid else None
        self.faults.check("restore")
        if state is not None:
            self.role.restore(state["role"])
        entries = self.store.read_log(self.file_name, cid)
        epochs: dict[str, int] = {}
        for e in entries:
            epochs[e.sender] = max(epochs.get(e.sender, cid), e.epoch)
            self.inbox.append(_Entry(e.batch, None, e.sender))
        self.barriers.restored(cid, epochs)
        self.replayed = len(entries)
        self.restore_s = time.perf_counter() - start
        self.log = self.store.log_writer(self.file_name, self.store.next_part(self.file_name))

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
            self.in_flight[(stage, replica)] = _Push(handles[replica].push.remote(part, _subset(refs, part), *self.sender), part)

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
            if push.batch is None:  # a barrier: the coordinator aborts the checkpoint on its own
                return False
            rids = sorted(set(push.batch.column("request_id").to_pylist()))
            self.wiring.collector.fail.remote(rids, f"a downstream replica died: {type(exc).__name__}")
            return False
        return True

    def _flush(self) -> None:
        for destination in list(self.in_flight):
            self._settle(destination)


def _indices(handles) -> list[int]:
    """Replica indices of a stage's handles (a list, or a dict index -> handle after a rescale)."""
    return list(handles) if isinstance(handles, dict) else list(range(len(handles)))


def _resolve(refs: dict | None) -> dict | None:
    """Fetch a batch's attachments. One whose object is lost (its producer died before this
    replica fetched it: `OwnerDiedError` and the rest of Ray's `ObjectLostError`s) is left
    out, and the role recomputes what it held: decode re-prefills from the tokens, the
    engine encodes the images itself (RELIABILITY.md fault 5)."""
    import ray

    if not refs:
        return None
    try:
        return dict(zip(refs, ray.get(list(refs.values()))))
    except ray.exceptions.ObjectLostError:
        found = {}
        for key, ref in refs.items():
            try:
                found[key] = ray.get(ref)
            except ray.exceptions.ObjectLostError:
                pass
        return found


def _subset(refs: dict | None, batch) -> dict | None:
    """The attachment refs of the rows in `batch` (keys are "request_id/index")."""
    if not refs:
        return None
    rids = batch.column("request_id").to_pylist()
    index = batch.column("index").to_pylist() if "index" in batch.schema.names else [0] * len(rids)
    keys = (f"{r}/{i}" for r, i in zip(rids, index))
    return {k: refs[k] for k in keys if k in refs} or None
