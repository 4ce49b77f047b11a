"""Building graphs: StageSpec / EdgeSpec validation and the `>>` wiring."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest

from tideflow.graphs import EdgeSpec, Graph, StageRef, StageSpec
from tests.graphs.test_compile import NODE, DummyDetok, DummyEngine, DummyPrefill, DummyTok


def test_stage_spec_stores_dicts_as_sorted_tuples_and_stays_hashable():
    spec = StageSpec("engine", "engine", resources={"zeta": 1, "accelerator_x": 2}, options={"model": "/m", "a": 1})
    assert spec.resources == (("accelerator_x", 2.0), ("zeta", 1.0))
    assert spec.options == (("a", 1), ("model", "/m"))
    assert spec.resources_dict == {"accelerator_x": 2.0, "zeta": 1.0}
    assert spec.options_dict == {"a": 1, "model": "/m"}
    same = StageSpec("engine", "engine", resources=(("zeta", 1), ("accelerator_x", 2)), options={"model": "/m", "a": 1})
    assert spec == same
    assert len({spec, dataclasses.replace(spec)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.replicas = 2  # type: ignore[misc]
    assert spec.demand() == {"CPU": 1.0, "accelerator_x": 2.0, "zeta": 1.0}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"replicas": 0}, r"stage 'engine': replicas must be an integer >= 1, got 0"),
        ({"replicas": 1.5}, r"stage 'engine': replicas must be an integer >= 1, got 1.5"),
        ({"replicas": True}, r"stage 'engine': replicas must be an integer >= 1"),
        ({"shards": 0}, r"stage 'engine': shards must be an integer >= 1, got 0"),
        ({"num_cpus": -1}, r"stage 'engine': num_cpus must be a number >= 0, got -1"),
        ({"num_gpus": -0.5}, r"stage 'engine': num_gpus must be a number >= 0, got -0.5"),
        ({"num_gpus": "1"}, r"stage 'engine': num_gpus must be a number >= 0, got '1'"),
        ({"resources": {"x": -1}}, r"stage 'engine': resources\['x'\] must be a number >= 0"),
        ({"resources": {"GPU": 1}}, r"stage 'engine': resources: give GPU as num_gpus"),
        ({"resources": [1, 2]}, r"stage 'engine': resources must be a mapping"),
        ({"options": {1: "x"}}, r"stage 'engine': options keys must be non-empty strings"),
    ],
)
def test_stage_spec_rejects_bad_fields_naming_stage_and_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StageSpec("engine", "engine", **kwargs)


@pytest.mark.parametrize("name", ["", "a/b", None])
def test_stage_names_are_mandatory_and_have_no_slash(name):
    with pytest.raises(ValueError, match="stage name must be a non-empty string without '/'"):
        Graph("g").stage(name, DummyEngine)


def test_graph_stage_rejects_bad_replicas_at_once():
    with pytest.raises(ValueError, match="stage 'engine': replicas must be an integer >= 1, got 0"):
        Graph("g").stage("engine", DummyEngine, replicas=0)


def test_edge_spec_validates_queue_size():
    assert EdgeSpec("a", "b").queue_size == 8
    assert str(EdgeSpec("a", "b")) == "a >> b"
    with pytest.raises(ValueError, match=r"edge 'a >> b': queue_size must be an integer >= 1, got 0"):
        EdgeSpec("a", "b", queue_size=0)


def test_duplicate_stage_name_raises_at_once():
    g = Graph("g")
    g.stage("engine", DummyEngine)
    with pytest.raises(ValueError, match="graph 'g' already has a stage named 'engine'"):
        g.stage("engine", DummyPrefill)
    assert len(g.stages) == 1


def test_duplicate_edge_raises():
    g = Graph("g")
    a, b = g.stage("a", DummyTok), g.stage("b", DummyEngine)
    a >> b
    with pytest.raises(ValueError, match="graph 'g' already has the edge 'a >> b'"):
        g.connect("a", "b", queue_size=2)


def test_stage_records_the_role_key_without_importing():
    g = Graph("g")
    assert g.stage("tok", DummyTok).spec.actor == "tests.graphs.test_compile:DummyTok"
    assert g.stage("eng", "engine").spec.actor == "engine"
    assert g.stage("ghost", "no.such.module:Ghost").spec.actor == "no.such.module:Ghost"  # compile reports it
    assert "no.such.module" not in sys.modules
    with pytest.raises(ValueError, match="stage 'bad': actor_class must be a StageRole subclass or a role key"):
        g.stage("bad", 42)


def test_chains_fan_out_and_fan_in():
    g = Graph("g")
    tok = g.stage("tokenize", DummyTok)
    pre_a, pre_b = g.stage("prefill_a", DummyPrefill), g.stage("prefill_b", DummyPrefill)
    dec = g.stage("decode", "tests.graphs.test_compile:DummyDecode")
    out = g.stage("detokenize", DummyDetok)
    result = tok >> [pre_a, pre_b]
    assert result == [pre_a, pre_b]
    assert ([pre_a, pre_b] >> dec >> out) is out
    assert [(e.src, e.dst) for e in g.edges] == [
        ("tokenize", "prefill_a"),
        ("tokenize", "prefill_b"),
        ("prefill_a", "decode"),
        ("prefill_b", "decode"),
        ("decode", "detokenize"),
    ]
    assert all(e.queue_size == 8 for e in g.edges)
    assert g.compile(NODE).sink == "detokenize"


def test_fan_out_then_fan_in_in_one_expression():
    g = Graph("g")
    tok, out = g.stage("tokenize", DummyTok), g.stage("detokenize", DummyDetok)
    tok >> [g.stage("e1", DummyEngine), g.stage("e2", DummyEngine)] >> out
    assert [str(e) for e in g.edges] == ["tokenize >> e1", "tokenize >> e2", "e1 >> detokenize", "e2 >> detokenize"]


def test_connect_takes_refs_or_names_and_a_queue_size():
    g = Graph("g")
    tok = g.stage("tokenize", DummyTok)
    g.stage("engine", DummyEngine)
    edge = g.connect(tok, "engine", queue_size=3)
    assert edge == EdgeSpec("tokenize", "engine", 3)
    assert g.edges == (edge,)
    assert g["engine"] == StageRef(g, "engine")
    with pytest.raises(KeyError, match="no stage 'nope'"):
        g["nope"]


def test_refs_from_another_graph_are_rejected():
    g, h = Graph("g"), Graph("h")
    a, b = g.stage("a", DummyTok), h.stage("b", DummyEngine)
    with pytest.raises(ValueError, match="stage 'b' belongs to graph 'h', not 'g'"):
        a >> b


def test_stages_and_edges_are_plain_frozen_data_in_insertion_order():
    g = Graph("g")
    names = ["z", "a", "m"]
    for n in names:
        g.stage(n, DummyEngine)
    assert [s.name for s in g.stages] == names
    assert isinstance(g.stages, tuple) and all(isinstance(s, StageSpec) for s in g.stages)


def test_graph_name_is_checked():
    with pytest.raises(ValueError, match="graph name must be a non-empty string"):
        Graph("")


def test_run_compiles_and_delegates_to_the_in_process_runtime(monkeypatch):
    calls = []
    inprocess = types.ModuleType("tideflow.runtime.dataflow.inprocess")
    inprocess.run_graph = lambda compiled, prompts, params, **kw: calls.append((compiled, prompts, params, kw)) or "ran"
    monkeypatch.setitem(sys.modules, "tideflow.runtime.dataflow.inprocess", inprocess)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=types.SimpleNamespace(device_count=lambda: 0)))
    g = Graph("g")
    g.stage("tokenize", DummyTok) >> g.stage("engine", DummyEngine)
    assert g.run(["hi"], None, max_steps=3) == "ran"
    (compiled, prompts, params, kw), = calls
    assert compiled.name == "g" and prompts == ["hi"] and params is None and kw == {"max_steps": 3}


def test_deploy_hands_the_uncompiled_graph_to_the_executor(monkeypatch):
    executor = types.ModuleType("tideflow.runtime.dataflow.executor")
    executor.deploy = lambda graph, address=None, **kw: (graph, address, kw)
    monkeypatch.setitem(sys.modules, "tideflow.runtime.dataflow.executor", executor)
    g = Graph("g")
    g.stage("engine", "not.compiled:Yet")
    assert g.deploy("ray://head:10001", detached=True) == (g, "ray://head:10001", {"detached": True})
