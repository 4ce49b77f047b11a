"""`llama3_json`: Llama 3.1/3.2's JSON tool calls, `{"name": ..., "parameters": {...}}`, maybe
after `<|python_tag|>`, several separated by ';' (as vLLM's parser of that name reads them).

Only an output that begins with a call (after whitespace and the tag) holds calls; anything
else is plain content. `arguments` is read where `parameters` is missing.
"""

from __future__ import annotations

from tideflow.serve.tool_parsers.json_sequence import JsonSequenceParser
from tideflow.serve.tool_parsers.json_prefix import skip_ws

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(JsonSequenceParser):
    separator = ";"
    argument_keys = ("parameters", "arguments")

    def _start(self, final: bool) -> int | None:
        i = skip_ws(self.text, 0)
        if self.text.startswith(PYTHON_TAG, i):
            return skip_ws(self.text, i + len(PYTHON_TAG))
        if not final and PYTHON_TAG.startswith(self.text[i:i + len(PYTHON_TAG)]):
            return None  # the tag may be on its way (or nothing but whitespace came yet)
        return i
