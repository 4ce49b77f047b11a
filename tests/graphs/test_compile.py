"""compile_graph: the whole-graph checks, each failure naming its stage or edge."""

from __future__ import annotations

import sys
import types

import pyarrow as pa
import pytest

from tideflow.actors import registry
from tideflow.runtime.dataflow.role import StageRole
from tideflow.graphs import CompiledGraph, Graph, compile_graph
from tideflow.runtime.edges.schemas import OUTPUTS, PREFILLED, REQUESTS, TOKENIZED, TOKENS

NODE = [{"CPU": 4, "GPU": 0}]  # a small CPU-only cluster of one node


class _Dummy(StageRole):
    def push(self, batch, attachments=None):
        pass

    def poll(self):
        return []


class DummyTok(_Dummy):
    consumes = REQUESTS
    produces = TOKENIZED


class DummyEngine(_Dummy):
    consumes = TOKENIZED
    produces = TOKENS


class DummyPrefill(_Dummy):
    consumes = TOKENIZED
    produces = PREFILLED


class DummyDecode(_Dummy):
    consumes = PREFILLED
    produces = TOKENS


class DummyDetok(_Dummy):
    consumes = TOKENS
    produces = OUTPUTS


class DummyIngress(_Dummy):
    consumes = None  # a source role
    produces = REQUESTS


class NotARole:
    pass


def chat() -> Graph:
    g = Graph("chat")
    g.stage("tokenize", DummyTok, num_cpus=0.5) >> g.stage("engine", DummyEngine) >> g.stage("detokenize", DummyDetok)
    return g


def test_compiles_a_chain_with_classes_and_strings(monkeypatch):
    monkeypatch.setitem(registry.ROLES, "dummy-detok", "tests.graphs.test_compile:DummyDetok")
    g = Graph("chat")
    tok = g.stage("tokenize", DummyTok)
    eng = g.stage("engine", "tests.graphs.test_compile:DummyEngine")
    out = g.stage("detokenize", "dummy-detok")  # a registry key
    tok >> eng >> out
    compiled = g.compile(NODE)
    assert isinstance(compiled, CompiledGraph)
    assert compiled.roles == {"tokenize": DummyTok, "engine": DummyEngine, "detokenize": DummyDetok}
    assert (compiled.source, compiled.sink) == ("tokenize", "detokenize")
    assert compiled.edge_schemas[("tokenize", "engine")].equals(TOKENIZED)
    assert compiled.edge_schemas[("engine", "detokenize")].equals(TOKENS)
    assert compiled.downstream("tokenize") == ["engine"] and compiled.upstream("tokenize") == []
    assert compiled.upstream("detokenize") == ["engine"] and compiled.downstream("detokenize") == []
    assert compiled.stage("engine").actor == "tests.graphs.test_compile:DummyEngine"
    assert compiled.edge("engine", "detokenize").queue_size == 8
    with pytest.raises(KeyError, match="'nope'"):
        compiled.stage("nope")


def test_a_class_given_directly_needs_no_import_path():
    class LocalDetok(DummyDetok):  # "module:<locals>.LocalDetok" cannot be imported, the class is kept
        pass

    g = Graph("local")
    g.stage("tokenize", DummyTok) >> g.stage("engine", DummyEngine) >> g.stage("detokenize", LocalDetok)
    assert g.compile(NODE).roles["detokenize"] is LocalDetok


def test_stages_come_in_topological_order_with_insertion_order_ties():
    g = Graph("diamond")
    out = g.stage("detokenize", DummyDetok)  # added first, ordered last
    dec = g.stage("decode", DummyDecode)
    pre_b = g.stage("prefill_b", DummyPrefill)
    pre_a = g.stage("prefill_a", DummyPrefill)
    tok = g.stage("tokenize", DummyTok)
    tok >> [pre_b, pre_a]
    [pre_a, pre_b] >> dec >> out
    compiled = g.compile(NODE)
    assert [s.name for s in compiled.stages] == ["tokenize", "prefill_b", "prefill_a", "decode", "detokenize"]
    assert compiled.downstream("tokenize") == ["prefill_b", "prefill_a"]
    assert compiled.upstream("decode") == ["prefill_a", "prefill_b"]
    order = [s.name for s in compiled.stages]
    for e in compiled.edges:
        assert order.index(e.src) < order.index(e.dst)


def test_describe_lists_stages_and_edges_with_schemas():
    g = Graph("chat")
    tok = g.stage("tokenize", DummyTok, num_cpus=0.25)
    eng = g.stage("engine", DummyEngine, num_gpus=1, replicas=2, shards=2, resources={"accelerator_x": 1})
    out = g.stage("detokenize", DummyDetok)
    tok >> eng
    g.connect(eng, out, queue_size=4)
    text = g.compile([{"CPU": 8, "GPU": 2, "accelerator_x": 1}]).describe()
    assert "graph 'chat': 3 stage(s), 2 edge(s); source 'tokenize', sink 'detokenize'" in text
    engine_row = next(line for line in text.splitlines() if line.strip().startswith("engine"))
    assert "tests.graphs.test_compile:DummyEngine" in engine_row
    assert engine_row.split()[2:4] == ["2", "2"]  # replicas, shards
    assert "CPU=1, GPU=1, accelerator_x=1" in engine_row
    assert "CPU=0.25" in text
    tok_edge = next(line for line in text.splitlines() if "tokenize >> engine" in line)
    assert "tokenized" in tok_edge and "request_id, prompt, prompt_token_ids" in tok_edge
    detok_edge = next(line for line in text.splitlines() if "engine >> detokenize" in line)
    assert " 4 " in detok_edge and "tokens" in detok_edge and "new_token_ids" in detok_edge


def test_a_single_stage_graph_is_its_own_source_and_sink():
    g = Graph("one")
    g.stage("engine", DummyEngine)
    compiled = g.compile(NODE)
    assert compiled.source == compiled.sink == "engine"
    assert "(none)" in compiled.describe()


# ---- rejections ---------------------------------------------------------------------------


def test_rejects_an_empty_graph():
    with pytest.raises(ValueError, match="graph 'empty' has no stages"):
        Graph("empty").compile(NODE)


def test_rejects_an_edge_to_a_missing_stage():
    g = chat()
    g.connect("engine", "nowhere")
    with pytest.raises(ValueError, match="edge 'engine >> nowhere' names stage 'nowhere'"):
        g.compile(NODE)


def test_rejects_a_cycle_naming_its_stages():
    g = Graph("loop")
    tok = g.stage("tokenize", DummyTok)
    pre = g.stage("prefill", DummyPrefill)
    dec = g.stage("decode", DummyDecode)
    out = g.stage("detokenize", DummyDetok)
    tok >> pre >> dec >> out
    dec >> pre
    with pytest.raises(ValueError, match=r"graph 'loop' has a cycle: prefill >> decode >> prefill"):
        g.compile(NODE)


def test_rejects_a_self_loop_and_a_cycle_with_no_source():
    g = Graph("self")
    a = g.stage("a", DummyEngine)
    a >> a
    with pytest.raises(ValueError, match=r"has a cycle: a >> a"):
        g.compile(NODE)
    g = Graph("ring")
    a, b, c = (g.stage(n, DummyEngine) for n in "abc")
    a >> b >> c >> a
    with pytest.raises(ValueError, match=r"has a cycle: a >> b >> c >> a"):
        g.compile(NODE)


@pytest.mark.parametrize(
    "actor, detail",
    [
        ("no-such-role", "unknown actor class 'no-such-role'"),
        ("tests.graphs.no_such_module:X", "unknown actor class 'tests.graphs.no_such_module:X'"),
        ("tests.graphs.test_compile:Missing", "unknown actor class 'tests.graphs.test_compile:Missing'"),
        ("tests.graphs.test_compile:NotARole", "is not a StageRole"),
        (NotARole, "NotARole is not a StageRole"),
    ],
)
def test_rejects_an_unknown_actor_class_naming_the_stage(actor, detail):
    g = Graph("chat")
    g.stage("tokenize", DummyTok) >> g.stage("engine", actor) >> g.stage("detokenize", DummyDetok)
    with pytest.raises(ValueError, match="stage 'engine': ") as exc:
        g.compile(NODE)
    assert detail in str(exc.value)


def test_rejects_a_schema_mismatch_naming_the_edge_schemas_and_field():
    g = Graph("chat")
    g.stage("tokenize", DummyTok) >> g.stage("decode", DummyDecode) >> g.stage("detokenize", DummyDetok)
    with pytest.raises(ValueError) as exc:
        g.compile(NODE)
    msg = str(exc.value)
    assert msg.startswith("edge 'tokenize >> decode': ")
    assert "'tokenize' (DummyTok) produces 'tokenized'" in msg
    assert "'decode' (DummyDecode) consumes 'prefilled'" in msg
    assert "first difference at field 1: produced 'prompt' (string) vs consumed 'index' (int32)" in msg


def test_schema_mismatch_names_custom_schemas_and_a_missing_field():
    class Narrow(_Dummy):
        consumes = REQUESTS
        produces = pa.schema([("request_id", pa.string())])

    class Wide(_Dummy):
        consumes = pa.schema([("request_id", pa.string()), ("extra", pa.int64())])
        produces = OUTPUTS

    g = Graph("custom")
    g.stage("a", Narrow) >> g.stage("b", Wide)
    match = r"produces 'custom' .* consumes 'custom'.*consumed 'extra' \(int64\) is not produced"
    with pytest.raises(ValueError, match=match):
        g.compile(NODE)


def test_rejects_an_edge_into_a_source_role():
    g = Graph("g")
    g.stage("tokenize", DummyTok) >> g.stage("ingress", DummyIngress)
    with pytest.raises(ValueError, match="edge 'tokenize >> ingress': stage 'ingress' .* consumes nothing"):
        g.compile(NODE)


def test_rejects_a_stage_unreachable_from_the_source():
    g = chat()
    g.stage("orphan", DummyEngine)
    with pytest.raises(ValueError, match="stage 'orphan' has no path from the source 'tokenize'") as exc:
        g.compile(NODE)
    assert "stages with no incoming edge: 'tokenize', 'orphan'" in str(exc.value)


def test_rejects_a_second_source():
    g = chat()
    g.stage("tokenize2", DummyTok) >> "engine"
    match = "stage 'tokenize2' has no path from the source 'tokenize'.*exactly one source"
    with pytest.raises(ValueError, match=match):
        g.compile(NODE)


def test_rejects_two_sinks():
    g = Graph("split")
    tok = g.stage("tokenize", DummyTok)
    tok >> [g.stage("engine_a", DummyEngine), g.stage("engine_b", DummyEngine)]
    with pytest.raises(ValueError, match="stage 'engine_a' has no path to the sink 'engine_b'") as exc:
        g.compile(NODE)
    assert "stages with no outgoing edge: 'engine_a', 'engine_b'; a graph has exactly one sink" in str(exc.value)


def test_rejects_stages_that_never_reach_the_sink():
    g = chat()
    dead = g.stage("dead_end", DummyDetok)  # fed by the engine, feeds nothing; the sink is declared earlier
    g.connect("engine", dead)
    with pytest.raises(ValueError, match="stage 'detokenize' has no path to the sink 'dead_end'"):
        g.compile(NODE)


@pytest.mark.parametrize(
    "kwargs, cluster, match",
    [
        (
            {"num_gpus": 1},
            [{"CPU": 4, "GPU": 0}],
            r"stage 'engine' needs GPU=1 per shard, but no node has that much \(most on one node: 0\)",
        ),
        ({"num_cpus": 8}, [{"CPU": 4}, {"CPU": 6}], r"stage 'engine' needs CPU=8 per shard.*most on one node: 6"),
        ({"resources": {"accelerator_x": 1}}, [{"CPU": 4}], r"stage 'engine' needs accelerator_x=1 per shard"),
        (
            {"num_gpus": 1},
            [{"CPU": 0.5, "GPU": 1}, {"CPU": 4, "GPU": 0}],
            r"stage 'engine' needs CPU=1, GPU=1 per shard on one node, but no single node has all of them",
        ),
        ({}, [], r"stage 'engine' needs CPU=1 per shard, but the cluster has no nodes"),
    ],
)
def test_rejects_resources_no_node_can_satisfy(kwargs, cluster, match):
    g = Graph("chat")
    g.stage("tokenize", DummyTok, num_cpus=0) >> g.stage("engine", DummyEngine, **kwargs)
    with pytest.raises(ValueError, match=match):
        g.compile(cluster)


def test_resources_are_per_shard_on_one_node_not_summed():
    g = Graph("chat")
    tok = g.stage("tokenize", DummyTok, num_cpus=0.25)
    eng = g.stage("engine", DummyEngine, num_gpus=0.5, replicas=8, shards=4, resources={"accelerator_x": 1})
    tok >> eng >> g.stage("detokenize", DummyDetok, num_cpus=0.25)
    g.compile([{"CPU": 1, "GPU": 0.5, "accelerator_x": 1.0, "memory": 1e9}])  # one shard fits: enough
    g.compile([{"CPU": 0.1, "GPU": 4}, {"CPU": 2, "GPU": 0.5, "accelerator_x": 2}])  # the second node fits


def test_rejects_a_malformed_cluster():
    with pytest.raises(ValueError, match="cluster must be a list of per-node resource dicts"):
        chat().compile({"CPU": 4})


def test_default_cluster_is_this_machine(monkeypatch):
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(device_count=lambda: 0))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.delitem(sys.modules, "ray", raising=False)  # as if Ray were not running (another test may have started it)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    chat().compile()  # fits on 2 CPUs
    g = Graph("gpu")
    g.stage("engine", DummyEngine, num_gpus=1)
    with pytest.raises(ValueError, match=r"stage 'engine' needs GPU=1 per shard, but no node has that much"):
        compile_graph(g)
    g = Graph("cpu")
    g.stage("engine", DummyEngine, num_cpus=3)
    with pytest.raises(ValueError, match=r"needs CPU=3 per shard.*most on one node: 2"):
        compile_graph(g)
