"""How a stage replica sends, without a Ray cluster: at most one push in flight per
destination, each awaited before the next to it (order, backpressure) and before the loop
idles; a receiver found dead fails the rows it was sent and later rows go around it. And
how it receives (on the session's Ray): an attachment whose producer died is left out."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import ray

from tideflow.runtime.dataflow.role import Emission, StageContext, StageRole
from tideflow.runtime.dataflow.stage_host import StageHost
from tideflow.runtime.dataflow.wiring import Wiring

SCHEMA = pa.schema([("request_id", pa.string())])


class Idle(StageRole):
    """A role that never has work of its own: the tests drive the replica's sender directly."""

    produces = SCHEMA

    def push(self, batch, attachments=None) -> None:
        pass

    def poll(self) -> list:
        return []


class Receiver:
    """Stands in for an actor handle; `push.remote` returns a ref that `ray.get` resolves."""

    def __init__(self, name: str, log: list, dead: bool = False):
        self.name, self.log, self.dead = name, log, dead
        self.push = SimpleNamespace(remote=self._push)
        self.fail = SimpleNamespace(remote=lambda rids, message: log.append(("fail", name, rids)))

    def _push(self, batch, refs=None, sender=None):
        rids = batch.column("request_id").to_pylist()
        self.log.append(("push", self.name, rids))
        return SimpleNamespace(receiver=self, rids=rids)


@pytest.fixture
def log(monkeypatch) -> list:
    """Every push, every wait for one, every failure, in the order they happen."""
    events: list = []

    def get(ref):
        events.append(("get", ref.receiver.name, ref.rids))
        if ref.receiver.dead:
            raise ray.exceptions.RayActorError()
        return 0

    monkeypatch.setattr(ray, "get", get)
    return events


def stage(downstream: list[Receiver] | None, collector: Receiver, sink: Receiver | None = None) -> StageHost:
    actor = StageHost(Idle, StageContext("g", "s"), inbox_size=2)
    actor.connect(Wiring(downstream={"d": downstream} if downstream else {},
                         routing={"d": "least_loaded"} if downstream else {},
                         upstream={}, sink=sink, collector=collector))
    return actor


def emit(actor: StageHost, *rids: str) -> None:
    actor.sender.send([Emission(pa.RecordBatch.from_pylist([{"request_id": r} for r in rids], schema=SCHEMA))])


@pytest.mark.parametrize("to_sink", [False, True])
def test_one_push_in_flight_per_destination_awaited_before_the_next(log, to_sink):
    receiver = Receiver("r", log)
    actor = stage(None, Receiver("c", log), sink=receiver) if to_sink else stage([receiver], Receiver("c", log))
    emit(actor, "a")
    emit(actor, "b", "c")
    emit(actor, "d")
    assert log == [("push", "r", ["a"]), ("get", "r", ["a"]), ("push", "r", ["b", "c"]),
                   ("get", "r", ["b", "c"]), ("push", "r", ["d"])]
    actor.sender.flush()
    assert log[-1] == ("get", "r", ["d"]) and actor.sender.in_flight == {}


def test_a_receiver_found_dead_fails_its_rows_and_later_rows_go_around_it(log):
    dead, alive, collector = Receiver("r0", log, dead=True), Receiver("r1", log), Receiver("c", log)
    actor = stage([dead, alive], collector)
    emit(actor, "a")  # least loaded: r0
    emit(actor, "b")  # r1, while the push to r0 is still in flight
    emit(actor, "c")  # r0 again: waiting for "a" finds it dead, so "c" goes to r1
    assert log == [
        ("push", "r0", ["a"]), ("push", "r1", ["b"]),
        ("get", "r0", ["a"]), ("fail", "c", ["a"]), ("get", "r1", ["b"]), ("push", "r1", ["c"]),
    ]
    emit(actor, "e")
    assert log[-1] == ("push", "r1", ["e"]) and ("push", "r0", ["e"]) not in log


def test_the_loop_awaits_its_pushes_before_it_idles(log):
    actor = stage([Receiver("r", log)], Receiver("c", log))
    emit(actor, "a")
    result: list = []
    waiter = threading.Thread(target=lambda: result.append(actor._next_work()))
    waiter.start()  # nothing to do: flushes, then waits for work
    deadline = time.monotonic() + 10
    while actor.sender.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    actor.abort([("a", None)])  # work arrives
    waiter.join(timeout=10)
    assert log == [("push", "r", ["a"]), ("get", "r", ["a"])]
    assert result == [([("abort", [("a", None)])], [])]


class Migrating(Receiver):
    """A receiver of a migrating stage: pushed to without Ray's retries. `hangs`: its pushes
    never land (it died with them queued)."""

    def __init__(self, name: str, log: list, dead: bool = False, hangs: bool = False):
        super().__init__(name, log, dead)
        self.hangs = hangs
        once = SimpleNamespace(remote=self._push)
        self.push = SimpleNamespace(remote=self._push, options=lambda **o: once if o == {"max_task_retries": 0} else None)


def migrating_stage(downstream: list[Receiver], collector: Receiver) -> StageHost:
    actor = StageHost(Idle, StageContext("g", "s"), inbox_size=2)
    actor.connect(Wiring(downstream={"d": downstream}, routing={"d": "least_loaded"}, upstream={}, sink=None,
                         collector=collector, replica_ids={"d": [0, 1]}, migrating=frozenset({"d"})))
    return actor


def test_a_migrating_stage_s_rows_go_to_a_live_replica_when_theirs_died(log, monkeypatch):
    monkeypatch.setattr(ray, "wait", lambda refs, timeout=None: (refs, []))
    dead, alive = Migrating("r0", log, dead=True), Migrating("r1", log)
    actor = migrating_stage([dead, alive], Receiver("c", log))
    emit(actor, "a")  # r0
    emit(actor, "b")  # r1
    emit(actor, "c")  # r0 again: its push of "a" failed, so "a" and then "c" go to r1, and nothing fails
    assert log == [
        ("push", "r0", ["a"]), ("push", "r1", ["b"]), ("get", "r0", ["a"]),
        ("get", "r1", ["b"]), ("push", "r1", ["a"]), ("get", "r1", ["a"]), ("push", "r1", ["c"]),
    ]


def test_a_wait_on_a_push_to_a_replica_that_went_down_gives_up_and_resends(log, monkeypatch):
    hung, alive = Migrating("r0", log, hangs=True), Migrating("r1", log)
    actor = migrating_stage([hung, alive], Receiver("c", log))

    def wait(refs, timeout=None):
        (ref,) = refs
        if ref.receiver.hangs:  # the coordinator's word arrives while the loop waits on r0
            actor.route_around("d", 0, False)
            return [], refs
        return refs, []

    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "cancel", lambda ref: log.append(("cancel", ref.receiver.name, ref.rids)))
    emit(actor, "a")  # r0
    emit(actor, "b")  # r1
    emit(actor, "c")  # r0: down while waiting on "a": its queued push is cancelled, "a" and "c" go to r1
    assert log == [
        ("push", "r0", ["a"]), ("push", "r1", ["b"]), ("cancel", "r0", ["a"]),
        ("get", "r1", ["b"]), ("push", "r1", ["a"]), ("get", "r1", ["a"]), ("push", "r1", ["c"]),
    ]
    actor.route_around("d", 0, True)  # back: routed to again, once the loop takes the messages
    for kind, payload in actor.control:
        actor.handlers[kind](payload)
    hung.hangs = False
    assert actor.sender.routers["d"].dead == set() and actor.sender.down == set()
    revived = len(log)
    emit(actor, "e", "f", "g")
    assert any(entry[:2] == ("push", "r0") for entry in log[revived:])


def test_an_attachment_whose_producer_died_is_left_out_for_the_role_to_recompute(ray_session):
    """A prefill replica that dies after sending KV by reference owns those objects: the
    decode replica that fetches them later gets `OwnerDiedError`, and must recompute (it
    treats a missing KV as a replay) instead of failing its whole loop."""
    from tideflow.runtime.dataflow.attachments import resolve as _resolve

    @ray.remote(num_cpus=0)
    class Producer:
        def put(self, value):
            return [ray.put(value)]  # a ref owned by this actor, as prefill's KV attachments are

    producer = Producer.remote()
    # a small KV (a short prompt on a small model) lives in its owner's memory: lost with it
    (lost,) = ray.get(producer.put.remote(np.arange(1000)))
    kept = ray.put("kv of b")
    assert _resolve({"b/0": kept}) == {"b/0": "kv of b"}
    ray.kill(producer)
    deadline = time.monotonic() + 60
    while True:  # Ray frees a dead owner's objects shortly after it notices the death
        try:
            ray.get(lost, timeout=10)
        except ray.exceptions.ObjectLostError:
            break
        assert time.monotonic() < deadline, "the dead producer's object stayed reachable"
        time.sleep(0.1)
    assert _resolve({"a/0": lost, "b/0": kept}) == {"b/0": "kv of b"}
