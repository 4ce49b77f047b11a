"""A graph's YAML (and plain-dict) form, e.g.

```yaml
name: chat
stages:
  - name: tokenize
    actor: tokenizer
    num_cpus: 0.25
    options: {model: /path/to/model}
  - name: engine
    actor: engine
    replicas: 2
    resources: {accelerator_x: 1}
  - name: detokenize
    actor: detokenizer
edges:
  - tokenize >> engine                              # default queue size
  - {src: engine, dst: detokenize, queue_size: 4}
```

An edge string may chain: `tokenize >> engine >> detokenize` adds two edges. Stage fields
left out take `StageSpec`'s defaults; `to_dict` writes only the fields that differ from them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from tideflow.graphs.graph import DEFAULT_QUEUE_SIZE, EdgeSpec, Graph, StageSpec

_STAGE_FIELDS = tuple(f.name for f in fields(StageSpec))  # name, actor, num_cpus, ..., options
_STAGE_DEFAULTS = {f.name: f.default for f in fields(StageSpec) if f.name not in ("name", "actor")}
_EDGE_KEYS = ("src", "dst", "queue_size")
_GRAPH_KEYS = ("name", "stages", "edges")


def graph_to_dict(graph: Graph) -> dict:
    """The plain-data form: {name, stages: [...], edges: [...]}, ready for `yaml.safe_dump`."""
    stages = []
    for spec in graph.stages:
        entry: dict[str, Any] = {"name": spec.name, "actor": spec.actor}
        for key, default in _STAGE_DEFAULTS.items():
            value = getattr(spec, key)
            if value != default:
                entry[key] = dict(value) if key in ("resources", "options") else value
        stages.append(entry)
    edges: list[Any] = [
        str(e) if e.queue_size == DEFAULT_QUEUE_SIZE else {"src": e.src, "dst": e.dst, "queue_size": e.queue_size}
        for e in graph.edges
    ]
    return {"name": graph.name, "stages": stages, "edges": edges}


def graph_from_dict(data: Mapping) -> Graph:
    """A graph from its plain-data form. Malformed entries raise ValueError naming the stage
    (or stage position) and the key, or the edge."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a graph must be a mapping with keys {list(_GRAPH_KEYS)}, got {type(data).__name__}")
    unknown = [k for k in data if k not in _GRAPH_KEYS]
    if unknown:
        raise ValueError(f"graph: unknown key {unknown[0]!r} (known: {', '.join(_GRAPH_KEYS)})")
    if "name" not in data:
        raise ValueError("graph: missing 'name'")
    graph = Graph(data["name"])

    stages = data.get("stages")
    if not isinstance(stages, list):
        raise ValueError(f"graph {graph.name!r}: 'stages' must be a list of stages, got {stages!r}")
    for i, entry in enumerate(stages):
        graph.add_stage(_stage_from_dict(i, entry))

    edges = data.get("edges") or []
    if not isinstance(edges, list):
        raise ValueError(f"graph {graph.name!r}: 'edges' must be a list, got {edges!r}")
    for i, entry in enumerate(edges):
        for edge in _edges_from_entry(i, entry):
            graph.connect(edge.src, edge.dst, edge.queue_size)
    return graph


def _stage_from_dict(i: int, entry: Any) -> StageSpec:
    if not isinstance(entry, Mapping):
        raise ValueError(f"stage #{i}: expected a mapping with 'name' and 'actor', got {entry!r}")
    label = f"stage {entry['name']!r}" if "name" in entry else f"stage #{i}"
    unknown = [k for k in entry if k not in _STAGE_FIELDS]
    if unknown:
        raise ValueError(f"{label}: unknown key {unknown[0]!r} (known: {', '.join(_STAGE_FIELDS)})")
    for key in ("name", "actor"):
        if key not in entry:
            raise ValueError(f"{label}: missing {key!r}")
    for key in ("resources", "options"):
        if entry.get(key) is not None and not isinstance(entry[key], Mapping):
            raise ValueError(f"{label}: {key} must be a mapping, got {entry[key]!r}")
    return StageSpec(**entry)


def _edges_from_entry(i: int, entry: Any) -> list[EdgeSpec]:
    try:
        if isinstance(entry, str):
            ends = [part.strip() for part in entry.split(">>")]
            if len(ends) < 2 or not all(ends):
                raise ValueError("expected 'src >> dst'")
            return [EdgeSpec(a, b) for a, b in zip(ends, ends[1:])]
        if isinstance(entry, Mapping):
            unknown = [k for k in entry if k not in _EDGE_KEYS]
            if unknown:
                raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(_EDGE_KEYS)})")
            if "src" not in entry or "dst" not in entry:
                raise ValueError("needs both 'src' and 'dst'")
            return [EdgeSpec(entry["src"], entry["dst"], entry.get("queue_size", DEFAULT_QUEUE_SIZE))]
        raise ValueError("expected 'src >> dst' or {src: ..., dst: ..., queue_size: ...}")
    except ValueError as exc:
        raise ValueError(f"edge #{i} ({entry!r}): {exc}") from None


def graph_to_yaml(graph: Graph) -> str:
    return yaml.safe_dump(graph_to_dict(graph), sort_keys=False)


def graph_from_yaml(text_or_path: str | os.PathLike) -> Graph:
    """A graph from YAML text, or from a file when given a path (a `Path`, or a one-line
    string naming an existing file or ending in .yaml / .yml)."""
    if isinstance(text_or_path, os.PathLike):
        text = Path(text_or_path).read_text()
    elif isinstance(text_or_path, str):
        text = text_or_path
        if "\n" not in text_or_path and (
            os.path.isfile(text_or_path) or text_or_path.strip().endswith((".yaml", ".yml"))
        ):
            text = Path(text_or_path.strip()).read_text()  # FileNotFoundError for a missing file
    else:
        raise TypeError(f"expected YAML text or a path, got {type(text_or_path).__name__}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {exc}") from None
    return graph_from_dict(data)
