"""The built-in stage roles by the names graphs (and YAML) use, imported on first use."""

from __future__ import annotations

import importlib

from tideflow.runtime.dataflow.role import StageRole

# registry key -> "module:Class", imported on first use
ROLES: dict[str, str] = {
    "tokenizer": "tideflow.actors.tokenizer:Tokenizer",
    "engine": "tideflow.actors.engine:Engine",
    "prefill": "tideflow.actors.prefill:Prefill",
    "decode": "tideflow.actors.decode:Decode",
    "detokenizer": "tideflow.actors.detokenizer:Detokenizer",
    "encoder": "tideflow.actors.encoder:Encoder",
}


def role_key(role: type[StageRole] | str) -> str:
    """The name a role is written under in YAML: its registry key, or "module:Class"."""
    if isinstance(role, str):
        return role
    path = f"{role.__module__}:{role.__qualname__}"
    for key, target in ROLES.items():
        if target == path:
            return key
    return path


def resolve_role(role: type[StageRole] | str) -> type[StageRole]:
    """A role class from a class, a registry key or "module:Class". Raises ValueError when unknown."""
    if isinstance(role, type):
        if not issubclass(role, StageRole):
            raise ValueError(f"{role.__qualname__} is not a StageRole")
        return role
    target = ROLES.get(role, role)
    module_name, _, class_name = target.partition(":")
    if not class_name:
        raise ValueError(f"unknown actor class {role!r}: not one of {sorted(ROLES)} and not 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"unknown actor class {role!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, StageRole)):
        raise ValueError(f"actor class {role!r} is not a StageRole")
    return cls
