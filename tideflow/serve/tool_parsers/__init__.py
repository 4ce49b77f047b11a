"""Tool-call parsers: how `tool_choice: "auto"` finds the calls in a model's text.

`tideflow serve --tool-call-parser NAME` picks one by name from `TOOL_PARSERS` (imported on
first use). Each is a `ToolParser` (`base.py`): fed a completion's text as it grows, it
answers what can be sent as content and as tool-call deltas.
"""

from __future__ import annotations

import importlib

from tideflow.serve.tool_parsers.base import (
    CallDelta,
    FunctionCall,
    ParsedOutput,
    ParserDelta,
    ToolParser,
    join_deltas,
    parse_whole,
)

# name -> "module:class"
TOOL_PARSERS = {
    "hermes": "tideflow.serve.tool_parsers.hermes:HermesToolParser",
    "llama3_json": "tideflow.serve.tool_parsers.llama3_json:Llama3JsonToolParser",
}


def tool_parser_class(name: str) -> type[ToolParser]:
    """The parser class registered as `name` (ValueError naming the known ones otherwise)."""
    if name not in TOOL_PARSERS:
        raise ValueError(f"unknown tool call parser {name!r}; known: {sorted(TOOL_PARSERS)}")
    module, attr = TOOL_PARSERS[name].split(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["TOOL_PARSERS", "CallDelta", "FunctionCall", "ParsedOutput", "ParserDelta", "ToolParser",
           "join_deltas", "parse_whole", "tool_parser_class"]
