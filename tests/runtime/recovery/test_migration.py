"""Request migration, its parts in-process (docs/reliability.md fault 10): what a dead replica
held is read back from its snapshot and log; a live replica rebuilds a request from the prompt
plus what the client has, continues its row numbers, and emits exactly the tokens of a run
without the death, greedy and seeded; the coordinator's side builds the `resume` column.

The deployed kills are in test_migration_deployed.py."""

from __future__ import annotations

import pytest

from tideflow import LLM, SamplingParams
from tideflow.actors.decode import Decode
from tideflow.actors.engine import Engine
from tideflow.actors.migration import held_completions, held_requests
from tideflow.runtime.dataflow.role import StageContext
from tideflow.runtime.dataflow.stage_config import parse_stage_config
from tideflow.runtime.edges import schemas
from tideflow.runtime.edges.rows import decode_logprobs, encode_logprobs, to_batch
from tideflow.runtime.recovery.migration import resume_of

GREEDY = SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, seed=11, n=2, max_tokens=14, ignore_eos=True, logprobs=2)
PROMPTS = {"greedy": [7, 99, 3, 250, 41, 8, 17], "seeded": [12, 5, 300, 77, 61]}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def reference(model):
    """(request id, completion index) -> (tokens, logprob entries) of a run without a death."""
    llm = LLM(model, dtype="float64")
    out = {}
    for rid, params in (("greedy", GREEDY), ("seeded", SEEDED)):
        (result,) = llm.generate([{"prompt_token_ids": PROMPTS[rid]}], params, use_tqdm=False)
        for c in result.outputs:
            out[(rid, c.index)] = (list(c.token_ids), c.logprobs)
    return out


def _role(cls, model: str, stage: str):
    return cls(StageContext("g", stage, 1, parse_stage_config(stage, {"model": model, "dtype": "float64"})))


def _drain(role, limit: int = 500) -> list[dict]:
    """Poll `role` until it has nothing left to do; every TOKENS row it emitted."""
    rows = []
    for _ in range(limit):
        if not role.has_work():
            return rows
        for emission in role.poll():
            rows += emission.batch.to_pylist()
    raise AssertionError("the role did not finish")


def _streams(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        out.setdefault((row["request_id"], row["index"]), []).append(row)
    return out


def _progress(index: int, tokens: list[int], logprobs=None, rows: int | None = None) -> dict:
    """What the sink had of a completion, one row per token (as engine rows carry one each)."""
    return {"index": index, "rows": len(tokens) if rows is None else rows, "token_ids": tokens,
            "logprobs": encode_logprobs(logprobs), "finished": False, "sampling_seed": None}


def _continues(rows: list[dict], first_seq: int, tokens: list[int]) -> None:
    """The rows go on from row `first_seq` without a gap and carry exactly `tokens`, the last finished."""
    assert [r["seq"] for r in rows] == list(range(first_seq, first_seq + len(rows)))
    assert [t for r in rows for t in r["new_token_ids"]] == tokens
    assert [r["finished"] for r in rows] == [False] * (len(rows) - 1) + [True]
    assert rows[-1]["producer"] == 1  # aborts (a stop string downstream) go to the replica it moved to


def test_an_engine_replica_rebuilds_a_moved_request_and_goes_on_where_the_client_is(model, reference):
    role = _role(Engine, model, "engine")
    cut = {("greedy", 0): 0, ("seeded", 0): 5, ("seeded", 1): 9}  # rows the client already had
    rows = []
    for rid, params in (("greedy", GREEDY), ("seeded", SEEDED)):
        resume = []
        for i in range(params.n):
            tokens, logprobs = reference[(rid, i)]
            k = cut[(rid, i)]
            resume.append(_progress(i, tokens[:k], None if logprobs is None else logprobs[:k]))
        rows.append({"request_id": rid, "prompt": None, "prompt_token_ids": PROMPTS[rid],
                     "sampling": schemas.params_to_row(params), "resume": resume})
    role.push(to_batch(rows, schemas.TOKENIZED))
    role.push(to_batch(rows[:1], schemas.TOKENIZED))  # a second copy of a moved request is dropped
    streams = _streams(_drain(role))
    assert set(streams) == set(cut)
    for key, k in cut.items():
        tokens, logprobs = reference[key]
        _continues(streams[key], k, tokens[k:])
        if logprobs is not None:  # the logprobs of the new positions, as without the death
            got = [e for r in streams[key] for e in decode_logprobs(r["logprobs"])]
            assert [sorted(e) for e in got] == [sorted(e) for e in logprobs[k:]]
    assert streams[("greedy", 0)][0]["prompt_token_ids"] == PROMPTS["greedy"]  # a first row repeats the prompt
    assert streams[("seeded", 0)][0]["prompt_token_ids"] is None
    assert role.stats()["kv_cache_usage_perc"] == 0 and not role.engine.has_unfinished()


def test_a_finished_completion_of_a_moved_request_stays_finished(model, reference):
    role = _role(Engine, model, "engine")
    tokens = reference[("seeded", 1)][0]
    done = {**_progress(1, tokens), "finished": True}
    row = {"request_id": "seeded", "prompt": None, "prompt_token_ids": PROMPTS["seeded"],
           "sampling": schemas.params_to_row(SEEDED.replace(logprobs=None)), "resume": [_progress(0, []), done]}
    role.push(to_batch([row], schemas.TOKENIZED))
    streams = _streams(_drain(role))
    assert list(streams) == [("seeded", 0)]  # completion 1 is not run again
    _continues(streams[("seeded", 0)], 0, reference[("seeded", 0)][0])


def test_a_decode_replica_rebuilds_a_moved_completion(model, reference):
    role = _role(Decode, model, "decode")
    rows = []
    for (rid, index), k in (((("greedy", 0)), 6), ((("seeded", 1)), 0)):
        params = GREEDY if rid == "greedy" else SEEDED
        tokens = reference[(rid, index)][0]
        rows.append({"request_id": rid, "index": index, "prompt_token_ids": PROMPTS[rid],
                     "sampling": schemas.params_to_row(params.replace(logprobs=None)), "first_token_id": tokens[0],
                     "sampling_seed": None, "finished": False, "resume": [_progress(index, tokens[:k])]})
    role.push(to_batch(rows, schemas.PREFILLED))
    streams = _streams(_drain(role))
    _continues(streams[("greedy", 0)], 6, reference[("greedy", 0)][0][6:])
    # nothing delivered yet: it starts as a replayed handover would, from its first token
    _continues(streams[("seeded", 1)], 0, reference[("seeded", 1)][0])
    assert role.stats()["kv_cache_usage_perc"] == 0


def test_what_a_dead_decode_replica_held_is_read_from_its_snapshot_and_log():
    def seq(rid, index, tokens, finished=False, seed=None):
        return {"request_id": rid, "index": index, "token_ids": [1, 2, 3, *tokens], "num_prompt_tokens": 3,
                "params": schemas.params_to_row(GREEDY), "sampling_seed": seed, "finished": finished}

    snapshot = {"seqs": [seq("a", 0, [9, 8], seed=5), seq("b", 0, [7], finished=True), seq("c", 1, [4]), seq("d", 0, [])],
                "done": [["c", 1]]}
    base = {"prompt_token_ids": [1, 2], "sampling": schemas.params_to_row(GREEDY), "first_token_id": 6,
            "finished": False, "error": None}
    logged = [to_batch([{**base, "request_id": "a", "index": 0, "first_token_id": 1},  # held already
                        {**base, "request_id": "e", "index": 0, "sampling_seed": 3},
                        {**base, "request_id": "f", "index": 0, "error": "bad prompt"},
                        {**base, "request_id": "g", "index": 0, "finished": True}], schemas.PREFILLED)]
    held = held_completions(snapshot, logged)
    assert [(r["request_id"], r["index"]) for r in held] == [("a", 0), ("e", 0)]
    a, e = held
    assert a["prompt_token_ids"] == [1, 2, 3] and a["first_token_id"] == 9 and a["sampling_seed"] == 5
    assert e["first_token_id"] == 6 and e["sampling_seed"] == 3
    assert held_completions(None, []) == []


def test_what_a_dead_engine_replica_held_is_read_from_its_snapshot_and_log():
    def request(rid, seqs, images=False):
        return {"request_id": rid, "prompt": "p", "prompt_token_ids": [1, 2],
                "params": schemas.params_to_row(GREEDY),
                "seqs": [{"index": i, "sampling_seed": s, "finished": f, **({"images": {}} if images else {})}
                         for i, (s, f) in enumerate(seqs)]}

    snapshot = {"requests": [request("a", [(5, False), (6, True)]), request("b", [(1, True)]),
                             request("c", [(None, False)], images=True), request("d", [(None, False)])],
                "done": ["d"]}
    base = {"prompt": None, "prompt_token_ids": [3], "sampling": schemas.params_to_row(GREEDY), "error": None}
    logged = [to_batch([{**base, "request_id": "e"}, {**base, "request_id": "a"},
                        {**base, "request_id": "f", "images": [b"png"]}, {**base, "request_id": "g", "error": "no"}],
                       schemas.TOKENIZED)]
    held = held_requests(snapshot, logged)
    assert [r["request_id"] for r in held] == ["a", "e"]  # images and rejected ones stay with the replica
    assert held[0]["resume"] == [{"index": 0, "sampling_seed": 5}, {"index": 1, "sampling_seed": 6}]


def test_the_resume_column_takes_the_clients_progress_and_the_seeds_the_replica_knew():
    progress = [{"index": 0, "rows": 3, "token_ids": [5, 6, 7], "logprobs": None, "finished": False},
                {"index": 1, "rows": 2, "token_ids": [1, 2], "logprobs": None, "finished": True}]
    decode_row = {"request_id": "r", "index": 0, "sampling_seed": 42}
    assert resume_of(decode_row, progress) == [{**progress[0], "sampling_seed": 42}]
    assert resume_of({**decode_row, "index": 1}, progress) is None  # that completion finished: nothing to move
    engine_row = {"request_id": "r", "resume": [{"index": 1, "sampling_seed": 9}]}
    assert resume_of(engine_row, progress) == [{**progress[0], "sampling_seed": None}, {**progress[1], "sampling_seed": 9}]
    assert resume_of(engine_row, [{**progress[0], "finished": True}, progress[1]]) is None


def test_which_stages_migrate_and_how_often_a_request_may_move(model):
    from tideflow.graphs.builtin import colocated, disaggregated
    from tideflow.runtime.dataflow.executor import migration_limits

    cluster = [{"CPU": 8.0}]
    graph = disaggregated(model, prefill=1, decode=2).compile(cluster=cluster)
    assert migration_limits(graph) == {"decode": 3}  # decode migrates; prefill, text stages do not
    assert migration_limits(graph, 1) == {"decode": 1} and migration_limits(graph, 0) == {}
    own = disaggregated(model, migration_limit=5).compile(cluster=cluster)
    assert migration_limits(own) == {"decode": 5} and migration_limits(own, 2) == {"decode": 2}  # deploy's wins
    assert migration_limits(colocated(model, replicas=2, migration_limit=0).compile(cluster=cluster)) == {}
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="migration_limit must be an integer >= 0"):
            migration_limits(graph, bad)
    with pytest.raises(ValueError, match=r"stage '\w+': migration_limit must be an integer >= 0, got -2"):
        disaggregated(model, migration_limit=-2).compile(cluster=cluster)
