"""Request migration (docs/reliability.md fault 10): when a replica of a stateful stage dies,
the requests it held move at once to a live replica of the same stage, while Ray restarts it.

Without it, the streams a dead replica held wait for Ray to restart it (a new worker imports
torch and loads the model: about 10 s on a 2-core machine) and for it to restore its last
checkpoint and replay its input log (some 40 ms). With it they pause for well under a second.

The `Migrator` runs in the checkpoint coordinator's event loop (one per deployed graph, with
recovery on) and watches the replicas of the stages that migrate: engine-owning stages whose
role is `migratable` (decode, the colocated engine) with two replicas or more and a
`migration_limit` above 0. A death is seen two ways: the GCS is asked every `POLL_S` which
actors are restarting (`tideflow.runtime.parallel.actor_state`; it knows within some 30 ms),
and each replica has a `wait_stopped` call in flight without retries, which fails when it dies
(about a second later; it also sees a replica dead for good). Then, for replica X of stage S:

1. the replicas upstream of S are told to route around X (`route_around`), and to stop
   waiting for what they pushed to it: what they resend goes to a live replica;
2. a live replica of S reads what X held from X's last snapshot and the input X logged since
   (`held_by`, interpreted by the role's class: `StageRole.held`);
3. the collector says how far each of those requests got (`progress`: rows and output
   tokens per completion); finished, failed and cancelled ones are left;
4. a request already moved `limit` times fails with an explicit error and is aborted
   everywhere; the others go to the live replicas (split by a hash of the request id) as rows
   of S's input schema whose `resume` column carries that progress. They are pushed like any
   input (sender `MIGRATION`), so the peer logs them and a second death recovers them too;
   the peer recomputes prompt plus delivered tokens and goes on from the next row number, so
   the sink's `(request_id, seq)` dedup sees one stream and greedy and seeded requests give
   the tokens of a run without the death;
5. what moved away from X is remembered: X, once restarted, asks (`restarted`, which waits
   for a migration of X in progress) and drops it after restoring, so nothing runs twice.
   Once Ray has X back, the replicas upstream route to it again.

A stage with one replica does not migrate: its replica restores and replays as before. A key
that every live peer gave away earlier stays with X too (a peer drops what it disowned).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tideflow.runtime.edges.rows import to_batch
from tideflow.runtime.parallel import actor_state

MIGRATION = "migration"  # the sender name migrated input is pushed and logged under
POLL_S = 0.1  # how often the GCS is asked which actors are restarting
_MEMORY = 65536  # keys moved away remembered per replica, and requests whose moves are counted


@dataclass(frozen=True)
class MigrationPlan:
    """Which stages migrate, and who talks to them; built by the executor at deploy and at
    each rescale."""

    limits: dict  # stage -> how often one request may move (>= 1); a stage left out does not migrate
    upstream: dict  # stage -> names ("stage/replica") of the replicas that push to it
    schemas: dict  # stage -> pa.Schema of its input: what migrated rows are sent as
    collector: object  # the graph's collector actor: how far each request got; fails those over the limit


NO_MIGRATION = MigrationPlan({}, {}, {}, None)  # no stage migrates


def _stage(name: str) -> tuple[str, int]:
    stage, _, replica = name.rpartition("/")
    return stage, int(replica)


def _key(row: dict) -> tuple[str, int | None]:
    """What moves as one unit: a completion (decode rows have an index) or a whole request."""
    return row["request_id"], row.get("index")


def _remember(memory: OrderedDict, key) -> None:
    memory[key] = None
    memory.move_to_end(key)
    while len(memory) > _MEMORY:
        memory.popitem(last=False)


def resume_of(row: dict, progress: list[dict]) -> list[dict] | None:
    """The `resume` column of a held `row` given the collector's `progress` of its request (one
    dict per completion): the row's own completion for a decode row, every completion for an
    engine row, each with the sampling seed the row knows. None when nothing is left to run."""
    seeds = {e["index"]: e.get("sampling_seed") for e in row.get("resume") or ()}
    if "index" in row:
        index = row["index"]
        seeds.setdefault(index, row.get("sampling_seed"))
        progress = [p for p in progress if p["index"] == index]
    if not progress or all(p["finished"] for p in progress):
        return None
    return [{**p, "sampling_seed": seeds.get(p["index"])} for p in progress]


class Migrator:
    """Watches the replicas of the migrating stages and moves a dead one's requests."""

    def __init__(self, on_death: Callable[[str], Awaitable[None]] | None = None):
        # awaited first when a replica is seen dead (the coordinator aborts the open checkpoint:
        # replicas downstream would hold back the live replicas' output, aligning its barrier)
        self.on_death = on_death
        self.plan: MigrationPlan | None = None
        self.everyone: dict[str, object] = {}  # "stage/replica" -> actor handle, every replica of the graph
        self.replicas: dict[str, object] = {}  # the same, of the migrating stages only
        self.ids: dict[str, str] = {}  # actor id (hex) -> "stage/replica"
        self.down: set[str] = set()  # replicas dead and not back yet
        self.busy: dict[str, asyncio.Event] = {}  # replica -> set once its requests have moved
        self.moved: dict[str, OrderedDict] = {}  # replica -> keys (request_id, index | None) moved away from it
        self.moves: OrderedDict[str, int] = OrderedDict()  # request id -> how often it moved
        self.incarnation: dict[str, int] = {}  # replica -> times it came back (stale watches are ignored)
        self.counts = {"deaths": 0, "moved": 0, "over_limit": 0, "last_s": 0.0}  # for `status`
        self.errors: list[str] = []  # what went wrong while moving (the replica then restores it)
        self.paused = False  # a rescale rewires the graph: deaths are left to restore-and-replay
        self.closed = False
        self._tasks: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None

    # -- topology -----------------------------------------------------------------------------
    def set_topology(self, replicas: dict, plan: MigrationPlan) -> None:
        """Watch the replicas (name -> handle, every replica of the graph) of the stages `plan`
        lets migrate."""
        self.plan = plan
        self.everyone = dict(replicas)
        mine = {n: h for n, h in replicas.items() if _stage(n)[0] in plan.limits}
        for name, handle in mine.items():
            if name not in self.replicas:
                self.incarnation.setdefault(name, 0)
                self._spawn(self._watch(name, handle, self.incarnation[name]))
        self.replicas = mine
        self.ids = {actor_state.actor_id(h): n for n, h in mine.items()}
        self.paused = False
        for schema in plan.schemas.values():
            to_batch([], schema)  # pyarrow imports pandas on its first conversion: not during a migration
        if self._poller is None and mine:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- seeing a death -------------------------------------------------------------------------
    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            if not self.ids:
                await asyncio.sleep(POLL_S)
                continue
            restarting = await loop.run_in_executor(None, actor_state.restarting)
            if restarting is None:
                return  # this Ray cannot say: the `wait_stopped` calls alone tell
            for actor in restarting & self.ids.keys():
                self._died(self.ids[actor])
            await asyncio.sleep(POLL_S)

    async def _watch(self, name: str, handle, incarnation: int) -> None:
        try:
            await handle.wait_stopped.options(max_task_retries=0).remote()
        except Exception:  # noqa: BLE001 - any failure of the call means the replica is gone
            if self.incarnation.get(name) == incarnation:
                self._died(name)

    def _died(self, name: str) -> None:
        if self.closed or self.paused or name in self.down or name not in self.replicas:
            return
        self.down.add(name)
        self.busy[name] = asyncio.Event()  # before any await: `restarted` must find it
        self._spawn(self._moved_then_back(name))

    async def _moved_then_back(self, name: str) -> None:
        stage, replica = _stage(name)
        start = time.perf_counter()
        try:
            if self.on_death is not None:
                await self.on_death(name)
            self._route(stage, replica, alive=False)
            await self._migrate(name, stage)
        except Exception as exc:  # noqa: BLE001 - what did not move is restored by the replica itself
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            self.counts["deaths"] += 1
            self.counts["last_s"] = time.perf_counter() - start
            self.busy.pop(name).set()
        await self._back(name)

    async def _back(self, name: str) -> None:
        """Wait for Ray to restart `name`, then route to it again and watch it anew."""
        handle = self.replicas.get(name)
        if handle is None:
            return
        try:
            await handle.ready.remote()  # retried through the restart
        except Exception:  # noqa: BLE001 - dead for good: it stays down
            return
        if self.closed or self.replicas.get(name) is not handle:
            return
        self.incarnation[name] += 1
        self.down.discard(name)
        self._route(*_stage(name), alive=True)
        self._spawn(self._watch(name, handle, self.incarnation[name]))

    def _route(self, stage: str, replica: int, alive: bool) -> None:
        """Tell the replicas upstream of `stage` (fire and forget: one restarting itself must
        not hold the migration up)."""
        for name in self.plan.upstream.get(stage, ()):
            handle = self.everyone.get(name)
            if handle is not None:
                handle.route_around.remote(stage, replica, alive)

    # -- moving ---------------------------------------------------------------------------------
    async def _migrate(self, name: str, stage: str) -> None:
        plan = self.plan
        peers = [n for n in self.replicas if _stage(n)[0] == stage and n != name and n not in self.down]
        if not peers:
            return  # none lives: the replica restores and replays what it held
        away = self.moved.setdefault(name, OrderedDict())
        rows = [r for r in await self.replicas[peers[0]].held_by.remote(name) if _key(r) not in away]
        if not rows:
            return
        progress = await plan.collector.progress.remote(sorted({r["request_id"] for r in rows}))
        sends: dict[str, list[dict]] = {}
        over: list[str] = []
        counted: set[str] = set()
        for row in rows:
            key, rid = _key(row), row["request_id"]
            resume = None if progress.get(rid) is None else resume_of(row, progress[rid])
            if resume is None:  # finished, failed or cancelled: nothing to move, nothing to run
                _remember(away, key)
                continue
            if rid not in counted:
                counted.add(rid)
                self.moves[rid] = self.moves.get(rid, 0) + 1
                self.moves.move_to_end(rid)
                while len(self.moves) > _MEMORY:
                    self.moves.popitem(last=False)
            if self.moves[rid] > plan.limits[stage]:
                over.append(rid)
                _remember(away, key)
                continue
            choices = [p for p in peers if key not in self.moved.get(p, ())]
            if choices:  # else it stays: every live peer gave it away before and would drop it
                sends.setdefault(choices[zlib.crc32(rid.encode()) % len(choices)], []).append({**row, "resume": resume})
        if over:
            await self._fail(sorted(set(over)), name, plan.limits[stage])
        peers_sent = list(sends)
        results = await asyncio.gather(
            *(self.replicas[p].push.remote(to_batch(sends[p], plan.schemas[stage]), None, MIGRATION) for p in peers_sent),
            return_exceptions=True,
        )
        for peer, result in zip(peers_sent, results):
            if isinstance(result, Exception):  # that peer died too: the rows stay with `name`
                self.errors.append(f"{name} -> {peer}: {type(result).__name__}")
                continue
            for row in sends[peer]:
                _remember(away, _key(row))
            self.counts["moved"] += len(sends[peer])

    async def _fail(self, request_ids: list[str], name: str, limit: int) -> None:
        self.counts["over_limit"] += len(request_ids)
        message = (f"migration_limit: the request moved {limit} time(s) already and replica {name}, "
                   f"which held it, died too; it is not moved again")
        await self.plan.collector.fail.remote(request_ids, message)
        for handle in self.everyone.values():
            handle.abort.remote([(rid, None) for rid in request_ids])

    # -- what the coordinator asks --------------------------------------------------------------
    async def restarted(self, name: str) -> list:
        """Replica `name` is being restarted (its constructor asks): once a migration of its
        requests is over, the keys that moved away from it, which it must drop."""
        if _stage(name)[0] not in (self.plan.limits if self.plan else {}):
            return []
        if name not in self.down and not self.closed:  # back before its death was seen: it keeps everything
            self.down.add(name)
            self._spawn(self._back(name))
        busy = self.busy.get(name)
        if busy is not None:
            await busy.wait()
        return list(self.moved.get(name, ()))

    def status(self) -> dict:
        return {**self.counts, "down": sorted(self.down), "errors": list(self.errors[-5:])}

    def close(self) -> None:
        self.closed = True
        for task in list(self._tasks) + ([self._poller] if self._poller else []):
            task.cancel()
