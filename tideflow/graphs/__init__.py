"""The graph DSL: stages, edges, validation, YAML, and the built-in graphs.

Build a `Graph` (or load one with `Graph.from_yaml`), `compile()` it into a `CompiledGraph`,
then run it in-process (`Graph.run`) or on Ray (`Graph.deploy`). Importing this package loads
neither torch nor ray.
"""

from __future__ import annotations

from tideflow.graphs.compile import CompiledGraph, compile_graph
from tideflow.graphs.graph import DEFAULT_QUEUE_SIZE, EdgeSpec, Graph, StageRef, StageSpec

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "CompiledGraph",
    "EdgeSpec",
    "Graph",
    "StageRef",
    "StageSpec",
    "compile_graph",
]
