"""The package's imports point only down its layers, and no two packages import each other.

Every module of `tideflow/` is parsed with `ast` (nothing is imported, so this runs in well
under a second) and each import is checked against the layers of docs/architecture.md:

    entrypoints   cli, llm, replay, tideflow/__init__, serve/, batch/, bench/
    graphs/
    actors/
    runtime/dataflow
    runtime/recovery
    runtime/edges
    runtime/parallel
    runtime/engine        (engine/core sits below the rest of engine/)
    models/, testing/, demo/
    kernels/              (kernels/cuda is part of kernels)
    config, outputs, sampling_params

What counts as an import: `import` and `from ... import` statements anywhere in a module,
the lazy ones inside functions included, and strings that name a module the way the
string-keyed registries and plugins do ("tideflow.x.y" or "tideflow.x.y:attr", imported with
`importlib` on first use). Imports under `if TYPE_CHECKING:` are exempt from the layer and
cycle rules (they never run; they only name types for annotations), but not from the
torch/numba/cupy rules below. An import of `tideflow.a.b` is an edge to the module
`tideflow/a/b.py` (or the package `a/b/__init__.py`), not to the parent packages' `__init__`s.

The rules:
- an import may not point to a higher layer;
- imports between two different packages of one layer may not close a cycle (modules of one
  package may import each other freely);
- `tideflow/runtime/engine/core` does not import torch, not even lazily;
- nothing outside `tideflow/kernels` imports numba or cupy.
Each failure names the importing file and line.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tideflow"

# Top to bottom: layer -> the packages in it. A package is a path under tideflow/ (a folder,
# or one module file without ".py"); a module belongs to the longest package that holds it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entrypoints", ("cli", "llm", "__init__", "replay", "engine_args", "serve", "batch", "bench")),
    ("graphs", ("graphs",)),
    ("actors", ("actors",)),
    ("runtime/dataflow", ("runtime/dataflow",)),
    ("runtime/recovery", ("runtime/recovery",)),
    ("runtime/edges", ("runtime/edges",)),
    ("runtime/parallel", ("runtime/parallel",)),
    ("runtime/engine", ("runtime/engine",)),
    ("runtime/engine/core", ("runtime/engine/core",)),
    ("models, testing, demo", ("models", "testing", "demo")),
    ("kernels", ("kernels",)),
    ("base", ("config", "outputs", "sampling_params", "runtime")),  # `runtime`: its __init__ only
]
WHOLE_ONLY = {"runtime"}  # packages that hold only their own __init__; a module beside it needs a layer
LAYER_OF: dict[str, int] = {pkg: i for i, (_, pkgs) in enumerate(LAYERS) for pkg in pkgs}

# Known edges that break the rules, each with why it is still here: (importing module,
# imported module) -> reason. Each one must still exist (so a fixed one is removed from here),
# and any edge not listed fails the test.
ALLOWED: dict[tuple[str, str], str] = {}

DYNAMIC = re.compile(r"tideflow(\.\w+)+(:\w+(\.\w+)*)?")


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # the importing module, dotted: "tideflow.runtime.dataflow.executor"
    path: str  # its file, relative to the repository root
    line: int  # the import's line
    target: str  # what it imports, dotted: a tideflow module, or "torch", "numba", ...
    type_only: bool  # under `if TYPE_CHECKING:`
    by_name: bool  # a "tideflow.x:attr" string, imported on first use by importlib

    def where(self) -> str:
        how = " (by name)" if self.by_name else ""
        return f"{self.path}:{self.line}: {self.module} imports {self.target}{how}"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    """The layer package that holds a tideflow module ("tideflow.runtime.engine.core.scheduler"
    -> "runtime/engine/core"; "tideflow" -> "__init__")."""
    parts = module.split(".")[1:]
    if not parts:
        return "__init__"
    for n in range(len(parts), 0, -1):
        key = "/".join(parts[:n])
        if key in LAYER_OF and (key not in WHOLE_ONLY or n == len(parts)):
            return key
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS in tests/test_layering.py")


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of a dotted tideflow name that is a module ("tideflow.graphs.Graph"
    -> "tideflow.graphs")."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def imports_of(module: str, rel: str, source: str, modules: dict[str, Path]) -> list[Import]:
    """The imports of one module, `source` being the text of its file `rel`."""
    tree = ast.parse(source, filename=rel)
    is_package = rel.endswith("__init__.py")
    found: list[Import] = []
    type_only_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                type_only_nodes.update(id(n) for n in ast.walk(child))
    docs = _docstrings(tree)

    def add(line: int, target: str, node: ast.AST, by_name: bool = False) -> None:
        if target.startswith("tideflow"):
            target = _resolve(target, modules)
        found.append(Import(module, rel, line, target, id(node) in type_only_nodes, by_name))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{source}.{alias.name}"
                add(node.lineno, sub if sub in modules else source, node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if DYNAMIC.fullmatch(node.value):
                name = node.value.partition(":")[0]
                if name in modules:
                    add(node.lineno, name, node, by_name=True)
    return found


def collect() -> list[Import]:
    modules = all_modules()
    return [
        imp
        for name, path in modules.items()
        for imp in imports_of(name, str(path.relative_to(ROOT)), path.read_text(), modules)
    ]


def _external(imp: Import, root: str) -> bool:
    return imp.target == root or imp.target.startswith(root + ".")


def layer_violations(imports: list[Import]) -> dict[tuple[str, str], list[Import]]:
    """(importer, imported) -> the imports that point up a layer."""
    bad: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in imports:
        if imp.type_only or not imp.target.startswith("tideflow"):
            continue
        src, dst = package_of(imp.module), package_of(imp.target)
        if LAYER_OF[dst] < LAYER_OF[src]:
            bad[(imp.module, imp.target)].append(imp)
    return bad


def cycle_violations(imports: list[Import]) -> dict[tuple[str, str], list[Import]]:
    """(importer, imported) -> the imports between packages of one layer that lie on a cycle
    of packages (upward imports are reported by `layer_violations` and left out here)."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in imports:
        if imp.type_only or not imp.target.startswith("tideflow"):
            continue
        src, dst = package_of(imp.module), package_of(imp.target)
        if src != dst and LAYER_OF[src] == LAYER_OF[dst]:
            edges[(src, dst)].append(imp)
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst in edges:
        graph[src].add(dst)

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(graph[node])
        return False

    bad: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for (src, dst), imps in edges.items():
        if reaches(dst, src):
            for imp in imps:
                bad[(imp.module, imp.target)].append(imp)
    return bad


def forbidden_externals(imports: list[Import]) -> list[Import]:
    """torch anywhere in engine/core; numba or cupy outside kernels/."""
    bad = []
    for imp in imports:
        pkg = package_of(imp.module)
        if pkg == "runtime/engine/core" and _external(imp, "torch"):
            bad.append(imp)
        if pkg != "kernels" and (_external(imp, "numba") or _external(imp, "cupy")):
            bad.append(imp)
    return bad


def _report(title: str, found: dict[tuple[str, str], list[Import]]) -> list[str]:
    lines = []
    for edge in sorted(found):
        if edge not in ALLOWED:
            lines += [f"{title}: {imp.where()}" for imp in found[edge]]
    return lines


def test_every_module_is_in_a_layer():
    for name in all_modules():
        package_of(name)  # raises for a module outside LAYERS


def test_imports_point_down_and_close_no_cycle():
    imports = collect()
    up, cycles = layer_violations(imports), cycle_violations(imports)
    errors = _report("points up a layer", up) + _report("closes a cycle between packages", cycles)
    assert not errors, "\n" + "\n".join(errors)
    stale = sorted(set(ALLOWED) - set(up) - set(cycles))
    assert not stale, f"allowed edges that no longer break a rule: remove them from ALLOWED: {stale}"


def test_core_has_no_torch_and_only_kernels_use_numba_or_cupy():
    bad = forbidden_externals(collect())
    assert not bad, "\n" + "\n".join(imp.where() for imp in bad)


def test_the_check_sees_lazy_relative_and_named_imports():
    """The parser finds what the rules need: an import inside a function, a relative import,
    a "module:attr" string, and an import under TYPE_CHECKING (marked type-only)."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from .graph import Graph\n"
        "if TYPE_CHECKING:\n"
        "    from tideflow.serve.config import ServeConfig\n"
        "def f():\n"
        "    import torch\n"
        "    from tideflow.actors import registry\n"
        "    from tideflow.llm import LLM\n"
        "PLUGIN = 'tideflow.runtime.dataflow.role:import_role'\n"
    )
    imports = imports_of("tideflow.graphs.probe", "tideflow/graphs/probe.py", source, all_modules())
    got = {(i.line, i.target, i.type_only, i.by_name) for i in imports}
    assert {
        (2, "tideflow.graphs.graph", False, False),
        (4, "tideflow.serve.config", True, False),
        (6, "torch", False, False),
        (7, "tideflow.actors.registry", False, False),
        (8, "tideflow.llm", False, False),
        (9, "tideflow.runtime.dataflow.role", False, True),
    } <= got
    # only the lazy import of an entrypoint points up; the type-only serve import does not count
    assert set(layer_violations(imports)) == {("tideflow.graphs.probe", "tideflow.llm")}


def _fake(module: str, target: str, line: int = 1) -> Import:
    return Import(module, module.replace(".", "/") + ".py", line, target, type_only=False, by_name=False)


def test_a_cycle_between_peer_packages_fails_and_one_inside_a_package_does_not():
    inside = [_fake("tideflow.testing.tiny_models", "tideflow.testing.tiny_llava"),
              _fake("tideflow.testing.tiny_llava", "tideflow.testing.tiny_models")]
    assert not cycle_violations(inside) and not layer_violations(inside)
    peers = [_fake("tideflow.batch.backends", "tideflow.serve.model_info", 64)]
    assert not cycle_violations(peers)  # peer entrypoints, one way
    loop = peers + [_fake("tideflow.serve.server", "tideflow.batch.run", 7)]
    found = cycle_violations(loop)
    assert set(found) == {("tideflow.batch.backends", "tideflow.serve.model_info"),
                          ("tideflow.serve.server", "tideflow.batch.run")}
    assert found[("tideflow.serve.server", "tideflow.batch.run")][0].where() == (
        "tideflow/serve/server.py:7: tideflow.serve.server imports tideflow.batch.run")
    up = layer_violations([_fake("tideflow.runtime.dataflow.executor", "tideflow.actors.registry", 16)])
    assert list(up) == [("tideflow.runtime.dataflow.executor", "tideflow.actors.registry")]
