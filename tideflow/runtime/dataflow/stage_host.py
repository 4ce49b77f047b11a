"""The Ray actor that hosts one replica of a stage: its inbox, backpressure, loop and stats.

It owns a bounded inbox and runs the role's loop on one thread (`run`, started once by the
executor and returning only at shutdown, so its ObjectRef tells the executor when the actor
dies). Input moves from the inbox into the role only while the role is `accepting`; a full
inbox blocks `push`, and since producers wait for `push` to return, a slow stage pushes back
on everything upstream. Nothing is dropped. What the role emits leaves through the replica's
`Sender` (`tideflow.runtime.dataflow.sender`: routing, pipelined pushes, failover).

Recovery lives behind the replica's `ReplicaHooks`, chosen once here at construction
(`tideflow.runtime.recovery.replica_hooks`): the null object when recovery is off, so the
push path and the loop carry no log, barrier or fault branches. With recovery on, Ray
restarts a crashed replica (`max_restarts`) and retries the calls it was running
(`max_task_retries`), `run` included; the hooks then restore it at the end of construction.

Request migration (`tideflow.runtime.recovery.migration`, docs/reliability.md fault 10) uses
three calls of a replica: `wait_stopped` (the coordinator learns of its death when the call
fails), `held_by` (what a dead peer of the same stage held, read from the store by the role's
class) and `route_around` (a replica downstream died or is back).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from tideflow.runtime.dataflow import attachments
from tideflow.runtime.dataflow.role import StageContext, import_role
from tideflow.runtime.dataflow.sender import Sender
from tideflow.runtime.dataflow.wiring import Wiring
from tideflow.runtime.recovery.barriers import INGRESS, Barrier
from tideflow.runtime.recovery.replica_hooks import replica_hooks


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


class StageHost:
    def __init__(self, role, context: StageContext, inbox_size: int, recovery=None, coordinator=None):
        """Host a `role` (a StageRole class or its "module:Class" target) for `context`'s
        replica. `recovery` (a RecoveryConfig, None: off) and `coordinator` (the graph's
        checkpoint coordinator, or its (name, namespace): looked up here, so that Ray keeps no
        constructor argument in the object store for a restart) choose the recovery hooks."""
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
        self.lock = threading.Condition()  # guards the inbox, `control`, `stopped` and the hooks' alignment
        self.stopped_event = threading.Event()  # set by `stop`: ends the `wait_stopped` calls
        self.inbox: deque[_Entry] = deque()  # bounded by inbox_size (held-back entries aside)
        self.control: deque = deque()  # (handler, payload): never bounded, never blocks
        self.stopped = False
        self.load = 0
        self.max_inbox = 0  # the deepest the inbox has been
        self.batches_in = 0
        self.busy_s = 0.0
        # control message -> handler
        self.handlers = {"abort": self.role.abort, "rewire": self._rewire, "route": self._route_around}
        self.sender = Sender(self.name)
        if isinstance(coordinator, tuple):
            import ray

            name, namespace = coordinator
            coordinator = ray.get_actor(name, namespace=namespace)
        self.hooks = replica_hooks(recovery, context.stage, context.replica, coordinator)
        self.hooks.attach(self)  # last: a restarted replica restores here

    # -- called by the executor and by other actors (any thread) ------------------------------
    def connect(self, wiring: Wiring) -> bool:
        self.sender.connect(wiring)
        with self.lock:
            self.hooks.connected(wiring.senders())
        return True

    def push(self, batch, attachments=None, sender: str = INGRESS) -> int:
        """Queue one input batch, blocking while the inbox is full. With recovery on, the
        batch is in the input log when this returns. Returns this replica's load."""
        with self.lock:
            while self.hooks.counted(self.inbox) >= self.inbox_size and not self.stopped:
                self.lock.wait()
            self.hooks.received(sender, batch)
            self.inbox.append(_Entry(batch, attachments, sender))
            self.max_inbox = max(self.max_inbox, len(self.inbox))
            self.lock.notify_all()
            return self.load + len(self.inbox)

    def barrier(self, checkpoint_id: int, sender: str = INGRESS) -> int:
        """Queue barrier `checkpoint_id` from `sender` (the coordinator's, at a source, or an
        upstream replica's), behind what `sender` pushed before. Never blocks. Returns the load."""
        with self.lock:
            self.hooks.delivered(sender, checkpoint_id)
            self.inbox.append(_Entry(Barrier(checkpoint_id), None, sender))
            self.lock.notify_all()
            return self.load + len(self.inbox)

    def abort_checkpoint(self, checkpoint_id: int) -> None:
        """The coordinator gave up on this checkpoint: stop aligning it, ignore its barriers."""
        with self.lock:
            self.hooks.abort_checkpoint(checkpoint_id)
            self.lock.notify_all()

    def rewire(self, wiring: Wiring, timeout: float = 60.0) -> bool:
        """Replace the replica's wiring (a rescale) between two steps of its loop, after the
        pushes in flight under the old one have landed. Returns once done (False: timed out)."""
        done = threading.Event()
        with self.lock:
            self.control.append(("rewire", (wiring, done)))
            self.lock.notify_all()
        return done.wait(timeout)

    def _rewire(self, payload: tuple) -> None:
        wiring, done = payload
        self.sender.flush()
        self.connect(wiring)
        done.set()

    def drained(self) -> bool:
        """Holds nothing: no input queued, no work in the role, no send in flight."""
        with self.lock:
            return not self.inbox and not self.role.has_work() and self.role.load() == 0 and self.sender.idle()

    def abort(self, targets) -> None:
        with self.lock:
            self.control.append(("abort", targets))
            self.lock.notify_all()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify_all()
        self.stopped_event.set()

    def wait_stopped(self) -> None:
        """Returns once the replica is stopped. The checkpoint coordinator keeps one such call
        in flight per replica, without retries: it fails when the replica dies."""
        self.stopped_event.wait()

    # -- request migration (docs/reliability.md fault 10) --------------------------------------
    def held_by(self, name: str) -> list[dict]:
        """What replica `name` ("stage/replica", of this replica's stage) held when it died, read
        from its last checkpoint and its input log by this role's class (`StageRole.held`)."""
        found = self.hooks.read_replica(name)
        if found is None:
            return []
        snapshot, logged = found
        return type(self.role).held(None if snapshot is None else snapshot["role"], logged)

    def route_around(self, stage: str, replica: int, alive: bool) -> None:
        """Replica `replica` of the downstream `stage` died (`alive` False: route around it, and
        stop waiting for what was pushed to it) or is back (route to it again)."""
        self.sender.set_alive(stage, replica, alive)  # at once: a wait on a push to it gives up
        with self.lock:
            self.control.append(("route", (stage, replica, alive)))
            self.lock.notify_all()

    def _route_around(self, payload: tuple) -> None:
        self.sender.apply_alive(*payload)

    def stats(self) -> dict:
        with self.lock:
            queued = len(self.inbox)
        return {
            **self.role.stats(),
            "load": self.load,
            "inbox": queued,
            "inbox_size": self.inbox_size,
            "max_inbox": self.max_inbox,
            "batches_in": self.batches_in,
            "batches_out": self.sender.batches_out,
            "busy_s": self.busy_s,
            "replayed": self.hooks.replayed,
            "restore_s": self.hooks.restore_s,
            "recovery_hooks": type(self.hooks).__name__,  # NullHooks when recovery is off
            "startup": self.startup,
            "node_id": self.node_id,
        }

    def ready(self) -> str:
        return f"{self.context.graph}/{self.context.stage}/{self.context.replica}"

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        role, hooks, send = self.role, self.hooks, self.sender.send
        while (work := self._next_work()) is not None:
            control, taken = work
            start = time.perf_counter()
            for kind, payload in control:
                self.handlers[kind](payload)
            for entry in taken:
                role.push(entry.batch, attachments.resolve(entry.refs))
            self.batches_in += len(taken)
            hooks.processed(len(taken))
            items = role.poll()
            self.load = role.load()
            self.busy_s += time.perf_counter() - start
            send(items)
            hooks.stepped()
        hooks.close()
        role.close()

    def _idle(self) -> bool:
        """Nothing to do (the caller holds `lock`)."""
        role = self.role
        if self.stopped or self.control or role.has_work():
            return False
        return not self.hooks.ready(self.inbox, role.accepting)

    def _next_work(self) -> tuple[list, list] | None:
        """Wait for control messages, input the role accepts, or work already inside it; take
        them. None once stopped. Before idling, the pushes still in flight are awaited, so a
        receiver that died is noticed (and its requests failed) even if nothing follows."""
        with self.lock:
            idle = self._idle()
        if idle:
            self.sender.flush()
        with self.lock:
            while self._idle():
                self.lock.wait()
            if self.stopped:
                return None
            control = list(self.control)
            self.control.clear()
            taken = self.hooks.take(self.inbox, self.role.accepting(), self.inbox_size)
            self.lock.notify_all()  # room in the inbox: wake blocked producers
            return control, taken

    # -- what the recovery hooks use (the `Replica` protocol) ---------------------------------
    def snapshot(self) -> dict:
        """The replica's state for a checkpoint (taken between two steps)."""
        return {"role": self.role.snapshot(), "batches_in": self.batches_in}

    def restore(self, state: dict) -> None:
        """Continue from a `snapshot` (after a restart, before any input)."""
        self.role.restore(state["role"])

    def disown(self, targets) -> None:
        """Drop what moved to a live replica while this one was down (at construction)."""
        self.role.disown(targets)

    def requeue(self, entries) -> None:
        """Queue logged inputs (LogEntry: sender, batch) in front of anything new (at construction)."""
        self.inbox.extend(_Entry(e.batch, None, e.sender) for e in entries)

    def flush_sends(self) -> None:
        self.sender.flush()

    def forward_barrier(self, checkpoint_id: int) -> None:
        self.sender.forward_barrier(checkpoint_id)
