"""The engine-owning roles use their engine through `EngineAPI` only: each role here gets its
engine behind a proxy that raises on any member `EngineAPI` does not declare (the scheduler,
runner, block manager, request table ...), and still yields the in-process LLM's greedy tokens,
also across a snapshot and restore and an abort."""

from __future__ import annotations

import msgpack
import pytest

from tideflow import LLM, SamplingParams
from tideflow.actors import engine_role
from tideflow.actors.engine import Engine as EngineRoleClass
from tideflow.graphs.builtin import disaggregated
from tideflow.runtime.dataflow.inprocess import InProcessGraph
from tideflow.runtime.dataflow.role import StageContext
from tideflow.runtime.dataflow.stage_config import parse_stage_config
from tideflow.runtime.edges import schemas
from tideflow.runtime.edges.rows import to_batch
from tideflow.runtime.engine.api import api_members

from tests.graphs.parity import mixed_requests

PUBLIC = api_members()


class PublicOnly:
    """An engine seen through `EngineAPI`: any other attribute raises."""

    def __init__(self, engine):
        object.__setattr__(self, "_engine", engine)

    def __getattr__(self, name: str):
        if name not in PUBLIC:
            raise AttributeError(f"{name!r} is not part of EngineAPI")
        return getattr(object.__getattribute__(self, "_engine"), name)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"roles do not set engine attributes ({name!r})")


@pytest.fixture
def public_engines(monkeypatch):
    """Every engine a role builds in this test comes behind `PublicOnly`."""
    build = engine_role.build_engine
    monkeypatch.setattr(engine_role, "build_engine", lambda config: PublicOnly(build(config)))


@pytest.fixture(scope="module")
def case(tiny_model_dir):
    """(model, prompts, params, the in-process LLM's greedy tokens)."""
    model = tiny_model_dir("llama")
    prompts, params = mixed_requests(512, count=6, seed=5)
    params = [p.replace(max_tokens=p.max_tokens + 4) for p in params]
    llm = LLM(model, dtype="float64")
    reference = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    return model, prompts, params, reference


def _tokenized(rid: str, ids: list[int], sp: SamplingParams) -> dict:
    return {"request_id": rid, "prompt": None, "prompt_token_ids": ids, "sampling": schemas.params_to_row(sp),
            "arrival_time": 0.0, "error": None, "images": None}


def test_the_private_parts_are_out_of_reach(tiny_model_dir, public_engines):
    role = EngineRoleClass(StageContext("g", "engine", 0, parse_stage_config("engine", {"model": tiny_model_dir("llama"), "dtype": "float32"})))
    assert isinstance(role.engine, PublicOnly)
    for name in ("scheduler", "runner", "blocks", "requests"):
        with pytest.raises(AttributeError, match="not part of EngineAPI"):
            getattr(role.engine, name)


def test_engine_role_through_the_public_api(case, public_engines):
    model, prompts, params, reference = case
    context = StageContext("g", "engine", 0, parse_stage_config("engine", {"model": model, "dtype": "float64", "max_num_seqs": 3}))
    role = EngineRoleClass(context)
    ids = [f"r{i}" for i in range(len(prompts))]
    extra = "aborted"
    rows = [_tokenized(rid, p["prompt_token_ids"], sp) for rid, p, sp in zip(ids, prompts, params)]
    rows.append(_tokenized(extra, prompts[0]["prompt_token_ids"], params[0].replace(max_tokens=50, ignore_eos=True)))
    role.push(to_batch(rows, schemas.TOKENIZED))
    role.push(to_batch(rows[:1], schemas.TOKENIZED))  # a replayed row of a held request is dropped
    assert role.load() == len(rows) and role.stats()["num_requests_running"] == 0

    got: dict[str, list[int]] = {rid: [] for rid in ids + [extra]}
    finished: set[str] = set()
    polls = 0
    while role.has_work():
        for emission in role.poll():
            for row in emission.batch.to_pylist():
                got[row["request_id"]] += row["new_token_ids"]
                if row["finished"]:
                    finished.add(row["request_id"])
        polls += 1
        if polls == 2:
            role.abort([(extra, None)])
        if polls == 5:  # a fresh replica continues from a msgpack round trip of the role's state
            assert role.load() > 0 and finished != set(ids)  # mid-flight
            state = msgpack.unpackb(msgpack.packb(role.snapshot(), use_bin_type=True), raw=False, strict_map_key=False)
            role = EngineRoleClass(context)
            role.restore(state)
            assert isinstance(role.engine, PublicOnly)
    assert [got[rid] for rid in ids] == reference
    assert finished == set(ids) and extra not in finished and len(got[extra]) < 50
    stats = role.stats()
    assert stats["num_requests_running"] == stats["num_requests_waiting"] == 0 and stats["kv_cache_usage_perc"] == 0
    assert role.load() == 0 and not role.engine.has_request(ids[0])
    role.push(to_batch(rows[:1], schemas.TOKENIZED))  # a finished request's replayed row is dropped too
    assert not role.has_work()


def test_prefill_and_decode_through_the_public_api(case, public_engines):
    model, prompts, params, reference = case
    graph = InProcessGraph(disaggregated(model, prefill=1, decode=2, dtype="float64", max_num_seqs=3).compile())
    try:
        assert all(isinstance(r.engine, PublicOnly) for stage in ("prefill", "decode") for r in graph.roles[stage])
        out = graph.generate(prompts, params)
    finally:
        graph.close()
    assert [o.outputs[0].token_ids for o in out] == reference
