"""A Serve config's nested sections (`breaker:`, `rate_limits:`) as their frozen dataclasses."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping


def section_from_value(cls, value, section: str, noun: str, convert: Callable):
    """`value` if it is a `cls` already, else `cls` built from a mapping of its fields, each
    value through `convert` (`serve run` passes key=value args as strings). ValueError names
    the section and any unknown key (`noun`: what a key is, e.g. "setting")."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{section} must be a mapping of {noun} -> value, got {value!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(value) - names
    if unknown:
        raise ValueError(f"{section}: unknown {noun}(s) {sorted(unknown)}; known: {sorted(names)}")
    return cls(**{k: convert(v) for k, v in value.items()})
