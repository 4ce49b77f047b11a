"""The outputs that `tool_choice` forces with a grammar, read back as tool calls.

`required`: a JSON array of `{"name": ..., "parameters": {...}}` objects (the schema in
`tideflow.serve.tool_choice`). A named function: the output is that function's arguments.
"""

from __future__ import annotations

from tideflow.serve.tool_parsers.base import CallDelta, ParserDelta, ToolParser
from tideflow.serve.tool_parsers.json_sequence import JsonSequenceParser


class RequiredToolParser(JsonSequenceParser):
    opening = "["
    separator = ","
    closing = "]"
    argument_keys = ("parameters",)


class NamedToolParser(ToolParser):
    """The whole output is the arguments of one call to `name` (sent as it comes, as vLLM
    does: when generation stops early they are cut short too)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def _advance(self, out: ParserDelta, final: bool) -> None:
        if self._sent is None and (self.text or final):
            out.calls.append(CallDelta(0, self.name, ""))
            self._count, self._sent = 1, 0
        if len(self.text) > (self._sent or 0):
            out.calls.append(CallDelta(0, None, self.text[self._sent:]))
            self._sent = len(self.text)
