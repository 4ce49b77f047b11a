"""The graph DSL: stages, edges, validation, YAML, and the built-in graphs.

Build a `Graph` (or load one with `Graph.from_yaml`, or take a built-in one: `colocated`,
`disaggregated`, `moe`, `multimodal`, also by name from `BUILTIN_GRAPHS`), `compile()` it into a
`CompiledGraph`, then run it in-process (`Graph.run`) or on Ray (`Graph.deploy`). Importing this
package loads neither torch nor ray.
"""

from __future__ import annotations

from tideflow.graphs.builtin import BUILTIN_GRAPHS, builtin_graph, colocated, disaggregated, moe, multimodal
from tideflow.graphs.compile import CompiledGraph, compile_graph
from tideflow.graphs.graph import DEFAULT_QUEUE_SIZE, EdgeSpec, Graph, StageRef, StageSpec

__all__ = [
    "BUILTIN_GRAPHS",
    "DEFAULT_QUEUE_SIZE",
    "CompiledGraph",
    "EdgeSpec",
    "Graph",
    "StageRef",
    "StageSpec",
    "builtin_graph",
    "colocated",
    "compile_graph",
    "disaggregated",
    "moe",
    "multimodal",
]
