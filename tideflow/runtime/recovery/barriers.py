"""Barrier alignment for one stage replica: which epoch an input belongs to, which input is
held back, and when the replica must snapshot.

A replica's senders are its upstream replicas (or the graph's ingress). Each sender's
inputs are tagged with the id of the last barrier it delivered (its epoch): the input log
files inputs by that tag, so a snapshot at checkpoint N covers exactly the inputs tagged
below N. While barrier N is being aligned, input from a sender that already delivered it is
held back; once every sender has, the snapshot is due. Aborted checkpoints (and those older
than the state the replica holds) are ignored. Not thread-safe: the replica's recovery hooks
(`tideflow.runtime.recovery.replica_hooks`) call it under the replica's lock.
"""

from __future__ import annotations

from dataclasses import dataclass

INGRESS = "ingress"  # the sender name of the graph's ingress (and of the coordinator's barriers)


@dataclass(frozen=True, slots=True)
class Barrier:
    """Checkpoint `checkpoint_id` passes here: everything a sender pushed before it belongs
    to the checkpoint, everything after to the next."""

    checkpoint_id: int


class BarrierAligner:
    def __init__(self, checkpoint_id: int = 0):
        self.senders: set[str] = {INGRESS}  # whose barriers are aligned
        self.epochs: dict[str, int] = {}  # sender -> id of the last barrier it delivered
        self.checkpoint_id = checkpoint_id  # the last snapshot taken or restored
        self.stale = checkpoint_id  # barriers up to this id are ignored
        self.aligning: int | None = None  # the barrier being aligned
        self.arrived: set[str] = set()  # senders whose `aligning` barrier came: their input is held back

    def set_senders(self, senders: set[str]) -> None:
        self.senders = set(senders) or {INGRESS}

    def epoch(self, sender: str) -> int:
        """The tag of the next input from `sender`."""
        return self.epochs.get(sender, self.checkpoint_id)

    def delivered(self, sender: str, checkpoint_id: int) -> None:
        """`sender` pushed barrier `checkpoint_id` (at push time: later input is tagged with it)."""
        self.epochs[sender] = max(self.epoch(sender), checkpoint_id)

    def held(self, sender: str) -> bool:
        """Input from `sender` waits until the barrier being aligned is complete."""
        return sender in self.arrived

    def met(self, sender: str, checkpoint_id: int) -> int | None:
        """The replica's loop reached `sender`'s barrier; returns the checkpoint to snapshot
        when it was the last one needed."""
        if checkpoint_id <= max(self.stale, self.checkpoint_id):
            return None  # aborted, or older than the state this replica holds
        if self.aligning is None or checkpoint_id > self.aligning:
            self.aligning, self.arrived = checkpoint_id, set()
        elif checkpoint_id < self.aligning:
            return None
        self.arrived.add(sender)
        if self.arrived >= self.senders:
            self.aligning, self.arrived = None, set()
            return checkpoint_id
        return None

    def snapshotted(self, checkpoint_id: int) -> None:
        self.checkpoint_id = max(self.checkpoint_id, checkpoint_id)

    def abort(self, checkpoint_id: int) -> None:
        """The coordinator gave up on `checkpoint_id`: stop aligning it, ignore its barriers."""
        self.stale = max(self.stale, checkpoint_id)
        if self.aligning is not None and self.aligning <= checkpoint_id:
            self.aligning, self.arrived = None, set()

    def restored(self, checkpoint_id: int, logged_epochs: dict[str, int]) -> None:
        """After a restart: the state is checkpoint `checkpoint_id`'s and the log held inputs
        up to these epochs; barriers seen before the crash are stale."""
        self.checkpoint_id = checkpoint_id
        self.epochs = {s: max(e, checkpoint_id) for s, e in logged_epochs.items()}
        self.stale = max([checkpoint_id, *self.epochs.values()])
