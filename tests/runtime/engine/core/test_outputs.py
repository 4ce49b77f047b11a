"""The scheduler's update returns an `EngineOutput`: a row per sampling sequence with the
step's tokens, reasons and logprobs, the requests it finished (once each), the step's shape.
No model: fake tokens from tests/runtime/helpers."""

from __future__ import annotations

from types import SimpleNamespace

from tideflow.outputs import Logprob
from tideflow.runtime.engine.core.outputs import EngineOutput
from tideflow.runtime.engine.core.sequence import Request, Sequence
from tideflow.sampling_params import SamplingParams

from tests.runtime.helpers import EOS, fake_tokens, make_scheduler, make_seq


def test_rows_reasons_and_the_step_shape():
    sched = make_scheduler(budget=32)
    a = make_seq(range(1, 6), max_tokens=2, rid="a")
    b = make_seq(range(10, 13), max_tokens=5, rid="b", stop_token_ids=[9])
    for s in (a, b):
        sched.add(s)
    batch = sched.schedule()
    out = sched.update(batch, fake_tokens(batch, lambda s: 7))
    assert (out.request_ids, out.indexes, out.token_ids, out.token_offsets) == (["a", "b"], [0, 0], [7, 7], [0, 1, 2])
    assert (out.num_scheduled_tokens, out.num_scheduled_seqs, out.decode_only) == (8, 2, False)
    assert out.finished == [False, False] and out.finished_requests == []  # no Request: adopted-style sequences

    batch = sched.schedule()
    out = sched.update(batch, fake_tokens(batch, lambda s: 8 if s is a else 9))
    assert out.decode_only and [out.new_token_ids(i) for i in range(len(out))] == [[8], [9]]
    assert (out.finished, out.finish_reasons, out.stop_reasons) == ([True, True], ["length", "stop"], [None, 9])
    assert out.new_logprobs(0) is None


def test_a_request_finishes_once_with_its_last_completion():
    sched = make_scheduler(budget=64)
    params = SamplingParams(n=2, max_tokens=3, temperature=0)
    seqs = [Sequence("r", i, [1, 2, 3], 3, params, max_tokens=2 + i) for i in range(2)]
    request = Request("r", None, [1, 2, 3], params, seqs)
    assert all(s.request is request for s in seqs)
    for s in seqs:
        sched.add(s)
    finished = []
    while sched.num_unfinished:
        batch = sched.schedule()
        out = sched.update(batch, fake_tokens(batch))
        finished.append(out.finished_requests)
    assert finished == [[], [], ["r"]]  # completion 0 ends at step 2, completion 1 (and the request) at step 3


def test_logprobs_ride_with_their_tokens():
    sched = make_scheduler()
    seq = make_seq(range(1, 4), max_tokens=1, logprobs=0)
    sched.add(seq)
    batch = sched.schedule()
    lp = {EOS: Logprob(-0.5, 1)}
    out = sched.update(batch, SimpleNamespace(token_ids=[EOS], logprobs=[lp]))
    assert out.new_logprobs(0) == [lp] and out.finish_reasons == ["stop"]
    assert EngineOutput().decode_only and len(EngineOutput()) == 0
