"""Nothing outside `tideflow.runtime.engine` touches an engine's private parts: its scheduler,
model runner, block manager or request table (the public face is `EngineAPI`).

An engine object is recognised by name: an attribute chain whose last link before the private
part is `engine` or `core` (or ends in `_engine` / `_core`): `core.scheduler`,
`engine.runner`, `self.engine.blocks`, `llm.engine.requests`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tideflow

PRIVATE = {"scheduler", "runner", "blocks", "requests"}
ENGINE_NAME = re.compile(r"(^|_)(engine|core)$")
ROOT = Path(tideflow.__file__).parent
ENGINE_PACKAGE = ROOT / "runtime" / "engine"


def _last_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def reach_ins(source: str) -> list[tuple[int, str]]:
    """(line, expression) of every private-part access on an engine-named object in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
            owner = _last_name(node.value)
            if owner is not None and ENGINE_NAME.search(owner):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Call) and _last_name(node.func) in ("getattr", "hasattr", "setattr") and len(node.args) >= 2:
            owner, attr = _last_name(node.args[0]), node.args[1]
            if owner is not None and ENGINE_NAME.search(owner) and isinstance(attr, ast.Constant) and attr.value in PRIVATE:
                found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_the_detector_sees_the_usual_shapes():
    source = "core.scheduler.add(s)\nself.engine.runner.read_kv()\nllm.engine.requests\ngetattr(engine, 'blocks')\n"
    assert [line for line, _ in reach_ins(source)] == [1, 2, 3, 4]
    assert reach_ins("self.scheduler = config.scheduler\nengine.step()\nengine_config.scheduler\n") == []


def test_no_module_outside_the_engine_reaches_into_an_engine():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.is_relative_to(ENGINE_PACKAGE):
            continue
        for line, expr in reach_ins(path.read_text()):
            offenders.append(f"{path.relative_to(ROOT.parent)}:{line}: {expr}")
    assert not offenders, "private engine parts used outside tideflow/runtime/engine:\n" + "\n".join(offenders)
