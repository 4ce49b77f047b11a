"""The checkpoint coordinator: an async Ray actor, one per deployed graph with recovery on.

It injects a barrier (checkpoint id N) into every source replica every `interval_s`
seconds, or sooner when a replica reports `interval_batches` inputs logged. Barriers flow
with the batches; each replica aligns them across its inputs, snapshots, forwards them and
acknowledges. When every replica has acknowledged N the coordinator writes N's completion
marker and deletes older checkpoints and log segments. A checkpoint still open after
`timeout_s`, or when a replica restarts (it may have died holding the barrier), is aborted:
every replica is told to stop aligning it, and the next one starts later.

It also keeps each replica's wiring, which a restarted replica fetches (Ray re-runs only
the constructor), and runs the graph's request migration (`tideflow.runtime.recovery.migration`):
a restarted replica asks it which of its requests moved to a peer meanwhile. No checkpoint is
started while a replica is down. Replicas know the coordinator by the handle they were
constructed with.
"""

from __future__ import annotations

import asyncio
import time

from tideflow.runtime.recovery.barriers import INGRESS
from tideflow.runtime.recovery.checkpoint_store import CheckpointStore
from tideflow.runtime.recovery.migration import NO_MIGRATION, MigrationPlan, Migrator
from tideflow.runtime.recovery.settings import RecoveryConfig


class CheckpointCoordinator:
    def __init__(self, config: RecoveryConfig):
        self.config = config
        self.store = CheckpointStore(config.checkpoint_dir)
        self.next_id = self.store.latest_complete() + 1
        self.replicas: dict[str, object] = {}  # "stage/replica" -> actor handle
        self.sources: list[str] = []  # replicas of the source stage
        self.wirings: dict[str, object] = {}  # "stage/replica" -> Wiring
        self.pending: int | None = None  # the checkpoint being taken
        self.waiting: set[str] = set()  # replicas that have not acknowledged it
        self.started = 0.0  # monotonic time the pending one was triggered
        self.last = time.monotonic()  # when the last checkpoint was triggered
        self.completed: list[int] = []
        self.aborted: list[int] = []
        self.restarts: dict[str, int] = {}
        self.task: asyncio.Task | None = None
        self.closed = False
        self.paused = False
        self.migrator = Migrator(self._died)  # moves a dead replica's requests to its peers

    async def start(self, replicas: dict, sources: list[str], wirings: dict, migration: MigrationPlan | None = None) -> None:
        """Begin checkpointing the graph made of `replicas` ("stage/replica" -> handle), and
        migrating requests as `migration` says (None: no stage migrates)."""
        self.replicas, self.sources, self.wirings = dict(replicas), list(sources), dict(wirings)
        self.last = time.monotonic()
        self.migrator.set_topology(self.replicas, migration or NO_MIGRATION)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._tick())

    async def pause(self) -> None:
        """Stop checkpointing (a rescale is rewiring the graph): abort the open one."""
        self.paused = True
        self.migrator.paused = True
        await self._abort("the graph is being rescaled")

    async def set_topology(self, replicas: dict, sources: list[str], wirings: dict,
                           migration: MigrationPlan | None = None) -> None:
        """The replicas after a rescale, with every replica's wiring; checkpointing (and
        migration, as `migration` now says) resumes."""
        self.replicas, self.sources = dict(replicas), list(sources)
        self.wirings.update(wirings)
        self.migrator.set_topology(self.replicas, migration or NO_MIGRATION)
        self.paused = False

    async def wiring(self, name: str):
        return self.wirings[name]

    async def _tick(self) -> None:
        period = min(self.config.interval_s, 0.5)
        while not self.closed:
            await asyncio.sleep(period)
            now = time.monotonic()
            if self.pending is not None and now - self.started > self.config.timeout_s:
                await self._abort("timed out")
            elif self.pending is None and now - self.last >= self.config.interval_s:
                await self.trigger()

    async def request(self, name: str) -> None:
        """A replica logged `interval_batches` inputs since the last checkpoint."""
        if self.pending is None and not self.closed:
            await self.trigger()

    async def trigger(self) -> int | None:
        """Start checkpoint N (None when one is open already): a barrier into every source replica."""
        if self.pending is not None or self.closed or self.paused or not self.replicas or self.migrator.down:
            return None  # (a replica that is down could not take part)
        cid, self.next_id = self.next_id, self.next_id + 1
        self.pending, self.waiting = cid, set(self.replicas)
        self.started = self.last = time.monotonic()
        for name in self.sources:
            self.replicas[name].barrier.remote(cid, INGRESS)
        return cid

    async def ack(self, checkpoint_id: int, name: str) -> None:
        if checkpoint_id != self.pending:
            return  # aborted meanwhile
        self.waiting.discard(name)
        if self.waiting:
            return
        self.store.mark_complete(checkpoint_id)
        self.store.delete_before(checkpoint_id)
        self.completed.append(checkpoint_id)
        self.pending = None

    async def restarted(self, name: str) -> list:
        """A replica came back from a crash: the open checkpoint may never complete. Returns,
        once a migration of its requests is over, the keys ((request_id, index | None)) that
        moved to its peers meanwhile: it drops them."""
        self.restarts[name] = self.restarts.get(name, 0) + 1
        await self._abort(f"{name} restarted")
        return await self.migrator.restarted(name)

    async def _died(self, name: str) -> None:
        """The migrator saw replica `name` die: the open checkpoint cannot complete without it,
        and replicas downstream aligning its barrier would hold back the live replicas' output."""
        await self._abort(f"{name} died")

    async def _abort(self, reason: str) -> None:
        if self.pending is None:
            return
        cid, self.pending, self.waiting = self.pending, None, set()
        self.aborted.append(cid)
        for handle in self.replicas.values():
            handle.abort_checkpoint.remote(cid)

    async def status(self) -> dict:
        return {
            "completed": list(self.completed),
            "aborted": list(self.aborted),
            "pending": self.pending,
            "restarts": dict(self.restarts),
            "latest_complete": self.store.latest_complete(),
            "migration": self.migrator.status(),
        }

    async def close(self) -> None:
        self.closed = True
        self.migrator.close()
        if self.task is not None:
            self.task.cancel()
