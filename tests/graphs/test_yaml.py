"""The YAML form of a graph, and `tideflow graph FILE --print`."""

from __future__ import annotations

import pytest
import yaml

from tideflow.cli import main
from tideflow.graphs import EdgeSpec, Graph, StageSpec
from tests.graphs.test_compile import DummyDecode, DummyDetok, DummyPrefill, DummyTok

T = "tests.graphs.test_compile"

CHAT = f"""
name: chat
stages:
  - name: tokenize
    actor: {T}:DummyTok
    num_cpus: 0.25
    options: {{model: /path/to/model}}
  - name: engine
    actor: {T}:DummyEngine
    replicas: 2
    resources: {{accelerator_x: 1}}
  - name: detokenize
    actor: {T}:DummyDetok
edges:
  - tokenize >> engine
  - {{src: engine, dst: detokenize, queue_size: 4}}
"""


def test_loads_the_documented_form():
    g = Graph.from_yaml(CHAT)
    assert g.name == "chat"
    assert g.stages == (
        StageSpec("tokenize", f"{T}:DummyTok", num_cpus=0.25, options={"model": "/path/to/model"}),
        StageSpec("engine", f"{T}:DummyEngine", replicas=2, resources={"accelerator_x": 1}),
        StageSpec("detokenize", f"{T}:DummyDetok"),
    )
    assert g.edges == (EdgeSpec("tokenize", "engine"), EdgeSpec("engine", "detokenize", 4))
    compiled = g.compile([{"CPU": 2, "accelerator_x": 1}])
    assert [s.name for s in compiled.stages] == ["tokenize", "engine", "detokenize"]


def test_round_trips_through_yaml_and_dict():
    g = Graph("disagg")
    tok = g.stage("tokenize", DummyTok, num_cpus=0.5, options={"model": "/m", "max_len": 128, "flags": ["a", "b"]})
    pre = g.stage("prefill", DummyPrefill, num_gpus=1, shards=2, replicas=2, resources={"accelerator_x": 0.5})
    dec = g.stage("decode", DummyDecode, num_gpus=1, replicas=4)
    out = g.stage("detokenize", DummyDetok, num_cpus=0)
    tok >> pre
    g.connect(pre, dec, queue_size=2)
    dec >> out
    text = g.to_yaml()
    back = Graph.from_yaml(text)
    assert back.name == g.name and back.stages == g.stages and back.edges == g.edges
    assert Graph.from_dict(g.to_dict()).stages == g.stages
    data = yaml.safe_load(text)
    assert list(data) == ["name", "stages", "edges"]
    assert data["stages"][3] == {"name": "detokenize", "actor": f"{T}:DummyDetok", "num_cpus": 0.0}  # defaults left out
    assert data["edges"] == [
        "tokenize >> prefill",
        {"src": "prefill", "dst": "decode", "queue_size": 2},
        "decode >> detokenize",
    ]


def test_loads_from_a_path(tmp_path):
    path = tmp_path / "chat.yaml"
    path.write_text(CHAT)
    assert Graph.from_yaml(path).name == "chat"
    assert Graph.from_yaml(str(path)).name == "chat"
    with pytest.raises(FileNotFoundError):
        Graph.from_yaml(str(tmp_path / "missing.yaml"))


def test_an_edge_string_may_chain():
    g = Graph.from_yaml(
        "name: g\nstages: [{name: a, actor: x}, {name: b, actor: y}, {name: c, actor: z}]\nedges: [a >> b >> c]\n"
    )
    assert [str(e) for e in g.edges] == ["a >> b", "b >> c"]


@pytest.mark.parametrize(
    "stage, match",
    [
        ("{name: engine, actor: engine, replica: 2}", r"stage 'engine': unknown key 'replica'"),
        ("{name: engine}", r"stage 'engine': missing 'actor'"),
        ("{actor: engine}", r"stage #0: missing 'name'"),
        ("engine", r"stage #0: expected a mapping"),
        ("{name: engine, actor: engine, replicas: two}", r"stage 'engine': replicas must be .* >= 1, got 'two'"),
        ("{name: engine, actor: engine, num_gpus: -1}", r"stage 'engine': num_gpus must be a number >= 0"),
        ("{name: engine, actor: engine, resources: [1]}", r"stage 'engine': resources must be a mapping"),
        ("{name: 'a/b', actor: engine}", r"stage name must be a non-empty string without '/'"),
    ],
)
def test_bad_stages_raise_naming_stage_and_key(stage, match):
    with pytest.raises(ValueError, match=match):
        Graph.from_yaml(f"name: g\nstages: [{stage}]\n")


@pytest.mark.parametrize(
    "edge, match",
    [
        ("'a > b'", r"edge #0 \('a > b'\): expected 'src >> dst'"),
        ("'a >> '", r"edge #0 \('a >> '\): expected 'src >> dst'"),
        ("{src: a}", r"edge #0 \(\{'src': 'a'\}\): needs both 'src' and 'dst'"),
        ("{src: a, dst: b, size: 2}", r"edge #0 .*unknown key 'size'"),
        ("{src: a, dst: b, queue_size: 0}", r"edge #0 .*queue_size must be an integer >= 1, got 0"),
        ("[a, b]", r"edge #0 \(\['a', 'b'\]\): expected 'src >> dst' or"),
    ],
)
def test_malformed_edges_raise_naming_the_edge(edge, match):
    with pytest.raises(ValueError, match=match):
        Graph.from_yaml(f"name: g\nstages: [{{name: a, actor: x}}, {{name: b, actor: y}}]\nedges: [{edge}]\n")


@pytest.mark.parametrize(
    "text, match",
    [
        ("- a\n- b\n", r"a graph must be a mapping"),
        ("name: g\nstages: []\nextra: 1\n", r"graph: unknown key 'extra'"),
        ("stages: []\n", r"graph: missing 'name'"),
        ("name: g\n", r"graph 'g': 'stages' must be a list"),
        ("name: g\nstages: [\n", r"invalid YAML"),
        ("name: g\nstages: [{name: a, actor: x}, {name: a, actor: y}]\n", r"already has a stage named 'a'"),
        ("name: g\nstages: [{name: a, actor: x}]\nedges: a >> a\n", r"graph 'g': 'edges' must be a list"),
    ],
)
def test_malformed_documents_raise(text, match):
    with pytest.raises(ValueError, match=match):
        Graph.from_yaml(text)


# ---- the CLI --------------------------------------------------------------------------------


def test_cli_prints_the_compiled_graph(tmp_path, capsys):
    path = tmp_path / "chat.yaml"
    path.write_text(CHAT.replace("resources: {accelerator_x: 1}", "num_cpus: 1"))
    assert main(["graph", str(path), "--print"]) == 0  # checked against this machine's resources
    out = capsys.readouterr().out
    assert "graph 'chat': 3 stage(s), 2 edge(s)" in out
    assert "tokenize >> engine" in out and "tokenized" in out


def test_cli_validates_against_a_given_cluster(tmp_path, capsys):
    path = tmp_path / "chat.yaml"
    path.write_text(CHAT)
    assert main(["graph", str(path), "--cluster", '[{"CPU": 2, "accelerator_x": 1}]']) == 0
    assert "graph 'chat' is valid: 3 stage(s), 2 edge(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, match",
    [
        (CHAT.replace("DummyEngine", "DummyPrefill"), "error: edge 'engine >> detokenize'"),
        (CHAT, "error: stage 'engine' needs accelerator_x=1 per shard"),
        (CHAT.replace("replicas: 2", "replicas: 0"), "error: stage 'engine': replicas must be an integer >= 1"),
    ],
)
def test_cli_reports_validation_errors_with_exit_code_2(tmp_path, capsys, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["graph", str(path), "--print", "--cluster", '[{"CPU": 2}]']) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(match)


def test_cli_reports_a_missing_file(tmp_path, capsys):
    assert main(["graph", str(tmp_path / "nope.yaml"), "--print"]) == 2
    assert capsys.readouterr().err.startswith("error: ")

