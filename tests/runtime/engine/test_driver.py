"""`EngineDriver` on a model-free engine (a scheduler stepping on fake tokens): finished
requests leave the engine at once, with their outputs kept or their ids remembered; the last
step's finished requests stay readable; `run` returns outputs in order or says it ran dry."""

from __future__ import annotations

import pytest

from tideflow.runtime.engine.core.sequence import Request, Sequence
from tideflow.runtime.engine.driver import EngineDriver
from tideflow.sampling_params import SamplingParams

from tests.runtime.helpers import fake_tokens, make_scheduler


class FakeEngine:
    """The members of EngineAPI the driver uses, over a real scheduler and no model."""

    def __init__(self):
        self.scheduler = make_scheduler()
        self.requests: dict[str, Request] = {}

    def add(self, rid: str, max_tokens: int, n: int = 1) -> None:
        params = SamplingParams(n=n, max_tokens=max_tokens, temperature=0)
        seqs = [Sequence(rid, i, [1, 2, 3], 3, params, max_tokens) for i in range(n)]
        self.requests[rid] = Request(rid, None, [1, 2, 3], params, seqs)
        for s in seqs:
            self.scheduler.add(s)

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def step(self):
        batch = self.scheduler.schedule()
        return self.scheduler.update(batch, fake_tokens(batch))

    def pop_finished(self, rid: str) -> Request:
        return self.requests.pop(rid)

    def sequence(self, rid: str, index: int) -> Sequence:
        return self.requests[rid].seqs[index]


def test_run_returns_outputs_in_order_and_reports_progress():
    engine = FakeEngine()
    for rid, m in (("a", 3), ("b", 1), ("c", 2)):
        engine.add(rid, m, n=2 if rid == "c" else 1)
    seen = []
    outputs = EngineDriver(engine, keep_outputs=True).run(["a", "b", "c"], seen.append)
    assert [o.request_id for o in outputs] == ["a", "b", "c"] and all(o.finished for o in outputs)
    assert [len(o.outputs) for o in outputs] == [1, 1, 2] and [len(o.outputs[0].token_ids) for o in outputs] == [3, 1, 2]
    assert seen == [1, 1, 1] and not engine.requests  # b, then c, then a


def test_roles_remember_finished_ids_and_read_the_last_step():
    engine = FakeEngine()
    engine.add("a", 1)
    engine.add("b", 2)
    done = set()
    driver = EngineDriver(engine, done=done)
    out = driver.step()
    assert out.finished_requests == ["a"] and done == {"a"} and "a" not in engine.requests and not driver.outputs
    assert driver.sequence("a", 0).finished and driver.sequence("b", 0).num_output_tokens == 1
    driver.step()
    assert done == {"a", "b"} and "a" not in driver.retired
    assert len(driver.step()) == 0  # nothing left: no step


def test_run_says_when_the_engine_runs_dry():
    engine = FakeEngine()
    with pytest.raises(RuntimeError, match="1 unfinished"):
        EngineDriver(engine, keep_outputs=True).run(["never-added"])
    with pytest.raises(ValueError, match="keep_outputs"):
        EngineDriver(engine).run([])
