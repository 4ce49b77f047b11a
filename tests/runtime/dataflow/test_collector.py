"""The sink's delta stream, without Ray: what `OutputCollector.delta` hands a streaming
client must rebuild exactly the output a non-streaming client gets, however the rows are
grouped between calls."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tideflow.runtime.edges.rows import encode_logprobs
from tideflow.runtime.edges.schemas import OUTPUTS
from tideflow.outputs import Logprob, RequestOutput
from tideflow.runtime.dataflow.collector import OutputCollector, OutputDelta, RequestError, copy_output, empty_output


def row(rid: str, seq: int, tokens: list[int], text: str, *, index: int = 0, finish: str | None = None,
        stop: str | None = None, logprobs: bool = False) -> dict:
    """One detokenizer row; the first row of a completion carries the prompt."""
    entries = [{t: Logprob(-0.5 * (k + 1), 1), t + 1: Logprob(-3.0, 2)} for k, t in enumerate(tokens)]
    return {
        "request_id": rid, "index": index, "seq": seq, "new_token_ids": tokens, "text": text,
        "logprobs": encode_logprobs(entries) if logprobs else None,
        "finished": finish is not None, "finish_reason": finish, "stop_reason": stop, "stop_token_id": None,
        "prompt_token_ids": [5, 6, 7] if seq == 0 else None, "error": None,
    }


def batch(*rows: dict) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(list(rows), schema=OUTPUTS)


def error_row(rid: str, message: str) -> dict:
    return {**row(rid, 0, [], ""), "finished": True, "finish_reason": "error", "error": message,
            "prompt_token_ids": None}


def stream(collector: OutputCollector, rid: str, groups: list[list[dict]]) -> tuple[RequestOutput, list[OutputDelta]]:
    """Feed the rows group by group, taking one delta after each group (as `next` does
    after one or more pushes); returns the client's rebuilt output and the deltas."""
    out, deltas = empty_output(rid, "p", len(collector.pending[rid].sent)), []
    for group in groups:
        collector.add(batch(*group))
        deltas.append(collector.delta(rid))
        deltas[-1].apply_to(out)
    return out, deltas


def whole(rows: list[dict], n: int = 1) -> RequestOutput:
    """The output a non-streaming client gets for the same rows."""
    c = OutputCollector()
    c.register("r", "p", n)
    c.add(batch(*rows))
    return c.pop("r")


def comparable(out: RequestOutput) -> RequestOutput:
    """Metrics are wall-clock times taken per collector: compare the rest."""
    out = copy_output(out)
    out.metrics = {}
    return out


ROWS = [
    row("r", 0, [11], "He", logprobs=True),
    row("r", 1, [12, 13], "llo", logprobs=True),
    row("r", 2, [14], "", logprobs=True),  # a character still split
    row("r", 3, [15], " wor", logprobs=True),
    row("r", 4, [16], "ld", finish="stop", stop="!", logprobs=True),
]


@pytest.mark.parametrize("grouping", [[1, 1, 1, 1, 1], [2, 3], [5], [1, 3, 1]])
def test_deltas_concatenate_to_the_whole_output(grouping):
    c = OutputCollector()
    c.register("r", "p", 1)
    groups, start = [], 0
    for size in grouping:
        groups.append(ROWS[start:start + size])
        start += size
    out, deltas = stream(c, "r", groups)
    assert comparable(out) == comparable(whole(ROWS))
    assert out.outputs[0].text == "Hello world" and out.outputs[0].token_ids == [11, 12, 13, 14, 15, 16]
    assert out.outputs[0].cumulative_logprob == pytest.approx(-0.5 * (1 + 1 + 2 + 1 + 1 + 1))
    # each delta carries only what is new: tokens once, the prompt once, the finish once
    assert sum(len(d.completions[0].token_ids) for d in deltas) == 6
    assert [d.prompt_token_ids for d in deltas] == [[5, 6, 7]] + [None] * (len(deltas) - 1)
    assert [d.completions[0].finish_reason for d in deltas] == [None] * (len(deltas) - 1) + ["stop"]
    assert [d.finished for d in deltas] == [False] * (len(deltas) - 1) + [True]
    assert out.metrics.keys() == {"arrival_time", "first_token_time", "finished_time"}


def test_coalesced_rows_come_as_one_delta():
    c = OutputCollector()
    c.register("r", "p", 1)
    for r in ROWS[:3]:  # three pushes, no `next` in between
        c.add(batch(r))
    delta = c.delta("r")
    assert delta.completions[0].token_ids == [11, 12, 13, 14] and delta.completions[0].text == "Hello"
    assert len(delta.completions[0].logprobs) == 4
    assert not c.pending["r"].dirty
    empty = c.delta("r")  # nothing arrived since: nothing to send but the (unchanged) state
    assert empty.completions == [] and empty.prompt_token_ids is None and empty.metrics is None


def test_duplicate_rows_are_dropped():
    c = OutputCollector()
    c.register("r", "p", 1)
    replayed = [[ROWS[0], ROWS[1]], [ROWS[1], ROWS[2]], [ROWS[0], ROWS[3], ROWS[3], ROWS[4]]]
    out, deltas = stream(c, "r", replayed)
    assert comparable(out) == comparable(whole(ROWS))
    assert [d.completions[0].token_ids for d in deltas] == [[11, 12, 13], [14], [15, 16]]
    assert c.add(batch(ROWS[2])) == set()  # a replay after the end changes nothing


def test_completions_finish_separately():
    c = OutputCollector()
    c.register("r", "p", 2)
    rows = [row("r", 0, [1], "a", index=0), row("r", 0, [2], "b", index=1, finish="length"),
            row("r", 1, [3], "c", index=0, finish="stop")]
    out, deltas = stream(c, "r", [rows[:1], rows[1:2], rows[2:]])
    assert comparable(out) == comparable(whole(rows, n=2))
    assert [[(d.index, d.finish_reason) for d in delta.completions] for delta in deltas] == [
        [(0, None)], [(1, "length")], [(0, "stop")]
    ]
    assert [d.finished for d in deltas] == [False, False, True]
    assert [(o.text, o.finish_reason) for o in out.outputs] == [("ac", "stop"), ("b", "length")]


def test_an_error_after_partial_output_is_raised():
    c = OutputCollector()
    c.register("r", "p", 1)
    out, _ = stream(c, "r", [ROWS[:2]])
    assert out.outputs[0].text == "Hello" and not out.finished
    assert c.add(batch(ROWS[2], error_row("r", "engine rejected it"))) == {"r"}
    assert c.finished("r")
    with pytest.raises(RequestError, match="engine rejected it"):
        c.delta("r")
    with pytest.raises(RequestError, match="engine rejected it"):
        c.pop("r")


def test_a_failed_stage_fails_a_streaming_request():
    c = OutputCollector()
    c.register("r", "p", 1)
    stream(c, "r", [ROWS[:1]])
    assert c.fail("stage replica g/engine/0 died", ["r", "unknown"]) == {"r"}
    with pytest.raises(RequestError, match="died"):
        c.delta("r")
    assert c.fail("again") == set()  # already finished


def test_copies_do_not_grow_with_the_output():
    c = OutputCollector()
    c.register("r", "p", 1)
    out, _ = stream(c, "r", [ROWS[:1]])
    first = copy_output(out)
    c.add(batch(*ROWS[1:]))
    c.delta("r").apply_to(out)
    assert first.outputs[0].token_ids == [11] and first.outputs[0].text == "He" and len(first.outputs[0].logprobs) == 1
    assert not first.finished and out.finished


def test_progress_is_what_the_sink_took_per_completion_and_none_once_finished():
    from tideflow.runtime.edges.rows import decode_logprobs

    c = OutputCollector()
    c.register("r", "p", 2)
    c.add(batch(row("r", 0, [4], "a", logprobs=True), row("r", 1, [5, 6], "bc", logprobs=True),
                row("r", 3, [9], "z"),  # out of order: not taken (yet)
                row("r", 0, [8], "x", index=1, finish="stop")))
    first, second = c.progress("r")
    assert (first["index"], first["rows"], first["token_ids"], first["finished"]) == (0, 2, [4, 5, 6], False)
    assert [sorted(e) for e in decode_logprobs(first["logprobs"])] == [[4, 5], [5, 6], [6, 7]]
    assert (second["rows"], second["token_ids"], second["logprobs"], second["finished"]) == (1, [8], None, True)
    assert c.progress("unknown") is None
    c.add(batch(row("r", 2, [7], "d", finish="length")))
    assert c.progress("r") is None  # finished: nothing left to move
    c.register("failed", "p", 1)
    c.fail("a stage died", ["failed"])
    assert c.progress("failed") is None
