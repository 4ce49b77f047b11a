"""`TokenStream.step_batch` builds a step's TOKENS batch column by column from the engine's
`EngineOutput`; it must hold exactly the rows that the per-sequence path (`rows`, used for
adopted and restored sequences) makes of the same completions: seq numbers, new tokens,
logprobs, finish state, and the prompt and params on each completion's first row only."""

from __future__ import annotations

from tideflow.runtime.edges.rows import TokenStream, concat, to_batch
from tideflow.runtime.edges.schemas import TOKENS
from tideflow.runtime.engine.core.outputs import EngineOutput
from tideflow.runtime.engine.driver import EngineDriver
from tideflow.sampling_params import SamplingParams

from tests.runtime.engine.test_driver import FakeEngine


def _with_logprobs(out: EngineOutput) -> EngineOutput:
    """The fake engine samples without logprobs: give request "b" some, as the sampler would."""
    from tideflow.outputs import Logprob

    for row, rid in enumerate(out.request_ids):
        start, end = out.token_offsets[row], out.token_offsets[row + 1]
        for k in range(start, end):
            if rid == "b":
                out.logprobs[k] = {out.token_ids[k]: Logprob(-0.25, 1), out.token_ids[k] + 1: Logprob(-2.0, 2)}
    return out


def test_step_batch_equals_the_per_sequence_rows():
    engine = FakeEngine()
    engine.add("a", 3)
    engine.add("b", 2, n=2)
    engine.add("c", 1)
    driver = EngineDriver(engine, done=set())
    columnar, by_sequence = TokenStream(producer=3), TokenStream(producer=3)
    steps = 0
    while engine.has_unfinished():
        out = _with_logprobs(driver.step())
        batch = columnar.step_batch(out, driver.sequence)
        seqs = []
        for row, (rid, index) in enumerate(zip(out.request_ids, out.indexes)):
            seq = driver.sequence(rid, index)
            if out.logprobs[out.token_offsets[row]] is not None:
                seq.logprobs = [None] * (len(seq.token_ids) - seq.num_prompt_tokens)  # what `rows` reads
                seq.logprobs[-len(out.new_token_ids(row)):] = out.new_logprobs(row)
            seqs.append(seq)
        expected = to_batch(by_sequence.rows(seqs), TOKENS).to_pylist()
        assert all(r["logprobs"] is not None for r in expected if r["request_id"] == "b")
        got = batch.to_pylist()
        for row in got:  # the per-sequence path leaves what it does not know null
            if row["seq"] != 0:
                assert row["prompt_token_ids"] is None and row["sampling"] is None
        assert got == expected
        assert batch.schema.equals(TOKENS)
        steps += 1
    assert steps >= 3 and columnar.sent == by_sequence.sent == {}
    assert columnar.step_batch(EngineOutput(), driver.sequence) is None


def test_concat_keeps_rows_before_the_step_batch():
    rows = [{"request_id": "x", "index": 0, "seq": 0, "new_token_ids": [7], "finished": False, "producer": 0}]
    step = to_batch([{"request_id": "x", "index": 0, "seq": 1, "new_token_ids": [8], "finished": False,
                      "producer": 0}], TOKENS)
    both = concat(rows, step, TOKENS)
    assert [r["seq"] for r in both.to_pylist()] == [0, 1]
    assert concat([], step, TOKENS) is step and concat([], None, TOKENS) is None
    assert concat(rows, None, TOKENS).to_pylist()[0]["new_token_ids"] == [7]
