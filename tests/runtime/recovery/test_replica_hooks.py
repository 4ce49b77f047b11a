"""Which recovery hooks a stage replica holds, and that with recovery off none of the log,
checkpoint or fault code runs: a spy on every method of the real hooks, the fault injector,
the input log and the checkpoint store, around a replica hosted in-process (no Ray cluster)
and a graph deployed with `recovery=False`. With recovery on the replica holds the real hooks;
what they do is covered by the fault, barrier and snapshot tests."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pyarrow as pa
import pytest
import ray

from tideflow.runtime.dataflow.role import Emission, StageContext, StageRole
from tideflow.runtime.dataflow.stage_host import StageHost
from tideflow.runtime.dataflow.wiring import Wiring
from tideflow.runtime.recovery.checkpoint_store import CheckpointStore, InputLog
from tideflow.runtime.recovery.faults import FaultInjector
from tideflow.runtime.recovery.replica_hooks import NULL_HOOKS, RecoveryHooks, ReplicaHooks
from tideflow.runtime.recovery.settings import RecoveryConfig

SCHEMA = pa.schema([("request_id", pa.string())])


class Echo(StageRole):
    """Emits each input batch as it is."""

    produces = SCHEMA

    def __init__(self, context):
        super().__init__(context)
        self.rows: list = []

    def push(self, batch, attachments=None) -> None:
        self.rows.append(batch)

    def poll(self) -> list:
        out, self.rows = [Emission(b) for b in self.rows], []
        return out

    def has_work(self) -> bool:
        return bool(self.rows)

    def snapshot(self) -> dict:
        return {"held": len(self.rows)}


class Sink:
    """Stands in for the collector: records the request ids pushed to it."""

    def __init__(self):
        self.rids: list[str] = []
        self.push = SimpleNamespace(remote=lambda batch: self.rids.extend(batch.column("request_id").to_pylist()))


class Coordinator:
    """Stands in for the checkpoint coordinator: records what replicas ask and acknowledge."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.request = SimpleNamespace(remote=lambda name: self.calls.append(("request", name)))
        self.ack = SimpleNamespace(remote=lambda cid, name: self.calls.append(("ack", cid, name)))


RECOVERY_CODE = [
    (RecoveryHooks, [m for m in vars(ReplicaHooks) if not m.startswith("_")] + ["__init__", "_recover", "_checkpoint"]),
    (FaultInjector, ["__init__", "check"]),
    (InputLog, ["__init__", "append", "close_before", "close"]),
    (CheckpointStore, ["__init__", "write_snapshot", "read_snapshot", "read_log", "log_writer", "fire_once"]),
]


@pytest.fixture
def spy(monkeypatch) -> list:
    """Every call into recovery code, as "Class.method"."""
    calls: list[str] = []
    for cls, names in RECOVERY_CODE:
        for name in names:
            original = getattr(cls, name)
            if not callable(original):
                continue

            def wrapped(*args, __original=original, __label=f"{cls.__name__}.{name}", **kwargs):
                calls.append(__label)
                return __original(*args, **kwargs)

            monkeypatch.setattr(cls, name, wrapped)
    monkeypatch.setattr(ray, "get", lambda ref: 0)  # the sink's push "returns" at once
    return calls


def batch(*rids: str) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{"request_id": r} for r in rids], schema=SCHEMA)


def run(host: StageHost, feed, done) -> None:
    """Run the replica's loop while `feed` pushes from another thread (pushes block while the
    inbox is full), until `done()`; then stop it."""
    loop = threading.Thread(target=host.run, daemon=True)
    pusher = threading.Thread(target=feed, daemon=True)
    loop.start()
    pusher.start()
    deadline = time.monotonic() + 10
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)  # polling: the fakes have no event to wait on
    host.stop()
    pusher.join(timeout=10)
    loop.join(timeout=10)
    assert not loop.is_alive() and not pusher.is_alive()


def test_with_recovery_off_a_replica_holds_the_null_hooks_and_runs_no_recovery_code(spy):
    sink = Sink()
    host = StageHost(Echo, StageContext("g", "s"), inbox_size=2)
    host.connect(Wiring(downstream={}, routing={}, upstream={"up": [None, None]}, sink=sink, collector=sink))
    assert host.hooks is NULL_HOOKS and host.stats()["recovery_hooks"] == "NullHooks"
    rids = [f"r{i}" for i in range(12)]  # more batches than the inbox holds
    run(host, lambda: [host.push(batch(r), None, f"up/{i % 2}") for i, r in enumerate(rids)], lambda: len(sink.rids) == len(rids))
    assert sink.rids == rids and host.stats()["batches_in"] == len(rids)
    assert spy == []  # no input log, no barrier alignment, no snapshot, no fault check


def test_with_recovery_on_a_replica_holds_the_real_hooks(spy, monkeypatch, tmp_path):
    context = SimpleNamespace(was_current_actor_reconstructed=False, get_node_id=lambda: None)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: context)  # a fresh replica, not a restarted one
    sink, coordinator = Sink(), Coordinator()
    config = RecoveryConfig(str(tmp_path), interval_batches=2)
    host = StageHost(Echo, StageContext("g", "s"), inbox_size=2, recovery=config, coordinator=coordinator)
    host.connect(Wiring(downstream={}, routing={}, upstream={"up": [None]}, sink=sink, collector=sink))
    assert isinstance(host.hooks, RecoveryHooks) and host.stats()["recovery_hooks"] == "RecoveryHooks"

    def feed():
        for r in ("a", "b", "c"):
            host.push(batch(r), None, "up/0")
        host.barrier(1, "up/0")

    run(host, feed, lambda: ("ack", 1, "s/0") in coordinator.calls)
    assert sink.rids == ["a", "b", "c"]
    assert coordinator.calls == [("request", "s/0"), ("ack", 1, "s/0")]  # asked once after 2 logged batches
    store = CheckpointStore(str(tmp_path))
    assert store.read_snapshot(1, "s-0") == {"role": {"held": 0}, "batches_in": 3}
    assert [e.batch.column("request_id").to_pylist() for e in store.read_log("s-0", 0)] == [["a"], ["b"], ["c"]]
    assert {"InputLog.append", "FaultInjector.check", "RecoveryHooks.stepped", "RecoveryHooks._checkpoint"} <= set(spy)


def test_a_graph_deployed_with_recovery_off_holds_the_null_hooks_in_every_replica(ray_session, tiny_model_dir):
    from tideflow import SamplingParams
    from tideflow.graphs.builtin import disaggregated

    model = tiny_model_dir("llama")
    handle = disaggregated(model, prefill=1, decode=1, dtype="float32", name="no-recovery").deploy(recovery=False)
    try:
        out = handle.generate(["def f(x):", "hello"], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        assert all(len(o.outputs[0].token_ids) == 4 for o in out)
        stats = handle.stats()
        replicas = [r for stage, rs in stats.items() if stage != "collector" for r in rs]
        assert len(replicas) == len(handle.graph.stages)
        assert all(r["recovery_hooks"] == "NullHooks" and r["replayed"] == 0 for r in replicas)
        assert handle.coordinator is None and handle.checkpoints() == {}
    finally:
        handle.shutdown()
