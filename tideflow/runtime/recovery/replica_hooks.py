"""What a stage replica does for recovery, behind one small interface.

The stage host (`tideflow.runtime.dataflow.stage_host`) calls its `ReplicaHooks` at fixed
points: when an input or a barrier enters its inbox, when its loop takes input, after each
step, at shutdown. Which hooks it holds is decided once, at construction, by `replica_hooks`:

- recovery off: `NULL_HOOKS` (`NullHooks`). The inbox is a plain FIFO; nothing is logged,
  aligned, snapshotted or injected, and no recovery code runs on the hot path.
- recovery on: `RecoveryHooks`. Every input is appended to the replica's input log before
  `push` returns, tagged with the id of the last barrier its sender delivered (its epoch).
  A replica with several senders aligns their barriers (input from a sender whose barrier
  came is held back until every sender's has), then lands its sends, snapshots, forwards the
  barrier downstream and acknowledges to the coordinator. After a crash Ray re-runs the
  constructor: the hooks fetch the wiring, restore the last completed checkpoint and queue
  the logged inputs of later epochs in front of anything new.

Epochs and alignment: `tideflow.runtime.recovery.barriers`; fault injection:
`tideflow.runtime.recovery.faults`. This module imports nothing from the dataflow layer
above it: the replica is seen through the `Replica` protocol.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from tideflow.runtime.recovery.barriers import Barrier, BarrierAligner
from tideflow.runtime.recovery.checkpoint_store import CheckpointStore, LogEntry, replica_name


class InboxEntry(Protocol):
    """One item of a replica's inbox, as the hooks read it."""

    batch: Any  # pa.RecordBatch, or a Barrier
    sender: str  # "stage/replica" of the upstream replica, or INGRESS


class Replica(Protocol):
    """The replica that holds the hooks, as `RecoveryHooks` uses it (the stage host)."""

    lock: threading.Condition  # guards the inbox and the hooks' alignment state

    def connect(self, wiring: Any) -> bool:
        """Take this wiring (who to send to, who sends here)."""

    def snapshot(self) -> dict:
        """The replica's state as plain data (msgpack-able). Mutates nothing."""

    def restore(self, state: dict) -> None:
        """Continue from a `snapshot` (after a restart, before any input)."""

    def requeue(self, entries: list[LogEntry]) -> None:
        """Queue logged inputs, in order, in front of anything new."""

    def disown(self, targets: list) -> None:
        """Drop these completions ((request_id, index | None)): they moved to another replica
        while this one was down (request migration)."""

    def flush_sends(self) -> None:
        """Wait until every push in flight downstream has landed."""

    def forward_barrier(self, checkpoint_id: int) -> None:
        """Send barrier `checkpoint_id` to every replica downstream, behind what was sent before."""


class ReplicaHooks(ABC):
    """The recovery side of one stage replica. Methods marked "lock held" are called with the
    replica's lock held and must not block on anything remote."""

    replayed: int = 0  # logged inputs queued again after the last restart
    restore_s: float = 0.0  # seconds the last restart spent restoring and reading the log

    @abstractmethod
    def attach(self, replica: Replica) -> None:
        """Called once, at the end of the replica's construction. Recovery on: keeps
        `replica`; after a restart connects it, restores its state and requeues its logged
        inputs; opens this incarnation's input log."""

    @abstractmethod
    def connected(self, senders: set[str]) -> None:
        """The replica's upstream senders ("stage/replica") after a (re)wiring (lock held).
        Mutates the set of senders whose barriers are aligned."""

    @abstractmethod
    def received(self, sender: str, batch) -> None:
        """An input batch from `sender` is entering the inbox (lock held). Recovery on:
        appends it to the input log under `sender`'s epoch, and asks the coordinator for a
        checkpoint once enough batches were logged since the last."""

    @abstractmethod
    def delivered(self, sender: str, checkpoint_id: int) -> None:
        """`sender`'s barrier `checkpoint_id` is entering the inbox (lock held): `sender`'s
        later input belongs to the next epoch. Mutates the epochs."""

    @abstractmethod
    def counted(self, inbox: deque) -> int:
        """How many inbox entries count against its bound (lock held). Mutates nothing."""

    @abstractmethod
    def ready(self, inbox: deque, accepting: Callable[[], bool]) -> bool:
        """Whether `take` would take something now, `accepting()` saying whether the role
        takes input (lock held). Mutates nothing."""

    @abstractmethod
    def take(self, inbox: deque, accepting: bool, limit: int) -> list:
        """Pop input for the role from the front of `inbox`, in order: up to `limit` entries
        while `accepting` (lock held). Recovery on: barriers met on the way are aligned and
        consumed, held-back entries stay queued, and once the last barrier needed is met
        nothing after it is taken and a snapshot is due (`stepped` takes it)."""

    @abstractmethod
    def processed(self, count: int) -> None:
        """The loop handed `count` more input batches to the role. Recovery on: counts them
        towards injected "process" faults (may end the process)."""

    @abstractmethod
    def stepped(self) -> None:
        """One step of the loop is done (its emissions are on their way). Recovery on: takes
        the snapshot `take` made due, if any: lands the sends, writes the snapshot, trims the
        log, forwards the barrier, acknowledges."""

    @abstractmethod
    def abort_checkpoint(self, checkpoint_id: int) -> None:
        """The coordinator gave up on `checkpoint_id` (lock held): stop aligning it, ignore
        its barriers. Mutates the alignment."""

    @abstractmethod
    def close(self) -> None:
        """The loop ended. Recovery on: the "close" fault point; closes the input log."""

    def read_replica(self, name: str) -> tuple[dict | None, list] | None:
        """Another replica's last completed snapshot (None: it has none) and the input batches
        it logged since, read from the store (request migration reads a dead peer's); None
        when recovery is off. Mutates nothing."""
        return None


class NullHooks(ReplicaHooks):
    """Recovery off: the inbox is a plain FIFO and every other hook does nothing."""

    def attach(self, replica: Replica) -> None:
        pass

    def connected(self, senders: set[str]) -> None:
        pass

    def received(self, sender: str, batch) -> None:
        pass

    def delivered(self, sender: str, checkpoint_id: int) -> None:
        pass

    def counted(self, inbox: deque) -> int:
        return len(inbox)

    def ready(self, inbox: deque, accepting: Callable[[], bool]) -> bool:
        return bool(inbox) and accepting()

    def take(self, inbox: deque, accepting: bool, limit: int) -> list:
        if not accepting:
            return []
        return [inbox.popleft() for _ in range(min(limit, len(inbox)))]

    def processed(self, count: int) -> None:
        pass

    def stepped(self) -> None:
        pass

    def abort_checkpoint(self, checkpoint_id: int) -> None:
        pass

    def close(self) -> None:
        pass


NULL_HOOKS = NullHooks()  # stateless: every replica with recovery off shares it


class RecoveryHooks(ReplicaHooks):
    """Recovery on: input log, barrier alignment, snapshots, restore, injected faults."""

    def __init__(self, config, stage: str, replica: int, coordinator):
        from tideflow.runtime.recovery.faults import FaultInjector

        self.interval_batches = config.interval_batches  # ask for a checkpoint after this many logged inputs
        self.name = f"{stage}/{replica}"  # the replica's name to the coordinator
        self.coordinator = coordinator  # the graph's CheckpointCoordinator (an actor handle)
        self.store = CheckpointStore(config.checkpoint_dir)
        self.file_name = replica_name(stage, replica)
        self.faults = FaultInjector(config.faults, stage, replica, self.store)
        self.barriers = BarrierAligner()  # epochs and alignment (under the replica's lock)
        self.due: int | None = None  # snapshot to take once the taken input is processed (loop thread)
        self.asked = False  # asked the coordinator for a checkpoint since the last one
        self.log = None  # InputLog of this incarnation, opened by `attach`
        self.replica: Replica | None = None

    def attach(self, replica: Replica) -> None:
        import warnings

        import ray

        self.replica = replica
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reconstructed = ray.get_runtime_context().was_current_actor_reconstructed
        if reconstructed:
            self._recover()
        self.log = self.store.log_writer(self.file_name, self.store.next_part(self.file_name))

    def _recover(self) -> None:
        """Ray restarted this replica: fetch the wiring, restore the last completed
        checkpoint, queue the inputs logged since, and tell the coordinator."""
        import ray

        start = time.perf_counter()
        replica = self.replica
        replica.connect(ray.get(self.coordinator.wiring.remote(self.name)))
        # aborts the open checkpoint (it may lack our barrier); waits for the requests this
        # replica held to move to its peers, if its stage migrates, and says which did
        moved = ray.get(self.coordinator.restarted.remote(self.name))
        cid = self.store.latest_complete()
        state = self.store.read_snapshot(cid, self.file_name) if cid else None
        self.faults.check("restore")
        if state is not None:
            replica.restore(state)
        entries = self.store.read_log(self.file_name, cid)
        epochs: dict[str, int] = {}
        for e in entries:
            epochs[e.sender] = max(epochs.get(e.sender, cid), e.epoch)
        replica.requeue(entries)
        if moved:
            replica.disown([tuple(k) for k in moved])
        self.barriers.restored(cid, epochs)
        self.replayed = len(entries)
        self.restore_s = time.perf_counter() - start

    def connected(self, senders: set[str]) -> None:
        self.barriers.set_senders(senders)

    def received(self, sender: str, batch) -> None:
        self.log.append(self.barriers.epoch(sender), sender, batch)
        if not self.asked and self.log.num_batches >= self.interval_batches:
            self.asked = True
            self.coordinator.request.remote(self.name)  # submits the call; does not wait for it

    def delivered(self, sender: str, checkpoint_id: int) -> None:
        self.barriers.delivered(sender, checkpoint_id)

    def counted(self, inbox: deque) -> int:
        # held-back entries do not count: a sender that delivered its barrier must not block
        # the others from delivering theirs
        if not self.barriers.arrived:
            return len(inbox)
        return sum(1 for e in inbox if not self.barriers.held(e.sender))

    def ready(self, inbox: deque, accepting: Callable[[], bool]) -> bool:
        held = self.barriers.held
        return any(isinstance(e.batch, Barrier) or accepting() for e in inbox if not held(e.sender))

    def take(self, inbox: deque, accepting: bool, limit: int) -> list:
        taken, held = [], []
        while inbox:
            entry = inbox[0]
            if self.barriers.held(entry.sender):  # after its sender's barrier: wait for the others
                held.append(inbox.popleft())
                continue
            if isinstance(entry.batch, Barrier):
                inbox.popleft()
                self.due = self.barriers.met(entry.sender, entry.batch.checkpoint_id)
                if self.due is not None:
                    break
                continue
            if not accepting or len(taken) >= limit:
                break
            taken.append(inbox.popleft())
        inbox.extendleft(reversed(held))
        return taken

    def processed(self, count: int) -> None:
        self.faults.check("process", count)

    def stepped(self) -> None:
        due, self.due = self.due, None
        if due is not None:
            self._checkpoint(due)

    def _checkpoint(self, checkpoint_id: int) -> None:
        """Everything before the barrier is processed and sent: make the sends durable
        downstream, snapshot, pass the barrier on, acknowledge."""
        replica = self.replica
        replica.flush_sends()
        self.store.write_snapshot(checkpoint_id, self.file_name, replica.snapshot())
        self.faults.check("snapshot")  # a crash here leaves the checkpoint incomplete
        with replica.lock:
            self.barriers.snapshotted(checkpoint_id)
            self.asked = False
            self.log.close_before(checkpoint_id)
        replica.forward_barrier(checkpoint_id)
        self.coordinator.ack.remote(checkpoint_id, self.name)

    def abort_checkpoint(self, checkpoint_id: int) -> None:
        self.barriers.abort(checkpoint_id)

    def close(self) -> None:
        self.faults.check("close")
        self.log.close()

    def read_replica(self, name: str) -> tuple[dict | None, list]:
        stage, _, replica = name.rpartition("/")
        file_name = replica_name(stage, int(replica))
        cid = self.store.latest_complete()
        state = self.store.read_snapshot(cid, file_name) if cid else None
        return state, [e.batch for e in self.store.read_log(file_name, cid)]


def replica_hooks(config, stage: str, replica: int, coordinator) -> ReplicaHooks:
    """The hooks of replica `replica` of `stage`: `NULL_HOOKS` when `config` (a
    RecoveryConfig) is None, else `RecoveryHooks` reporting to `coordinator`."""
    if config is None:
        return NULL_HOOKS
    return RecoveryHooks(config, stage, replica, coordinator)
