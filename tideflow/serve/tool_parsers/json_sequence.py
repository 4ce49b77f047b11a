"""Calls written as bare JSON objects one after another: `JsonSequenceParser`, the shared
engine of `llama3_json` (objects separated by ';') and of the output `tool_choice: required`
constrains (a JSON array of objects).

Once a call object cannot be one, the text from its start on is content (or, when its name
was already streamed, the call ends as it was sent and the rest is dropped).
"""

from __future__ import annotations

from tideflow.serve.tool_parsers.base import ParserDelta, ToolParser, scan_call
from tideflow.serve.tool_parsers.json_prefix import Malformed, skip_ws


class JsonSequenceParser(ToolParser):
    """Calls from `opening` on: call objects with `argument_keys`, `separator` between them,
    `closing` after the last (if not None)."""

    opening: str = ""  # what comes before the first call ("[" for an array)
    separator: str = ";"
    closing: str | None = None  # what ends the sequence ("]"); None: the text's end does
    argument_keys: tuple[str, ...] = ("parameters", "arguments")

    def __init__(self):
        super().__init__()
        self.pos = 0  # everything before is decided
        # "start": before the first call | "call": in a call object | "between" calls | "closed":
        # past the closing | "content": the rest is content | "done" / "dropped": the rest is dropped
        self.mode = "start"

    def _start(self, final: bool) -> int | None:
        """Where the first call object starts once the text shows it (else the mode changes
        to "content"); None while the text does not tell yet."""
        i = skip_ws(self.text, 0)
        if self.text.startswith(self.opening, i):
            return skip_ws(self.text, i + len(self.opening))
        if not final and self.opening.startswith(self.text[i:]):
            return None
        self.mode = "content"
        return None

    def _advance(self, out: ParserDelta, final: bool) -> None:
        if self.mode == "start":
            start = self._start(final)
            if start is not None:
                if start == len(self.text) and not final:
                    return
                self.pos, self.mode = start, "call"
            elif self.mode == "start" and final:
                self.mode = "content"
        while self.mode in ("call", "between"):
            if self.mode == "call" and not self._call(out, final):
                return
            if self.mode == "between" and not self._between(final):
                return
        if self.mode == "closed":  # only whitespace may follow; anything else is content
            i = skip_ws(self.text, self.pos)
            if i < len(self.text):
                self.pos, self.mode = i, "content"
        if self.mode == "content":
            self._add_content(out, self.text[self.pos:])
            self.pos = len(self.text)

    def _call(self, out: ParserDelta, final: bool) -> bool:
        """Advance in the call object at `pos`; whether it ended."""
        try:
            scan = scan_call(self.text, self.pos, self.argument_keys)
        except Malformed:
            scan = None
        if scan is not None and (scan.end is not None or not final):
            self._send_call(out, scan)
            if scan.end is None:
                return False
            self._end_call()
            self.pos, self.mode = scan.end, "between"
            return True
        if self._call_open:  # its name went out already: the call ends as it was sent
            self._end_call()
            self.mode = "dropped"
        else:
            self.mode = "content"
            if self._count == 0:
                self.pos = 0  # no call at all: the whole text is content
        return True

    def _between(self, final: bool) -> bool:
        """After a call object: a separator and the next call, the closing, or the end."""
        i = skip_ws(self.text, self.pos)
        if i == len(self.text):
            if final:
                self.mode = "done"
            return final
        if self.text.startswith(self.separator, i):
            j = skip_ws(self.text, i + len(self.separator))
            if j == len(self.text) and not final:
                return False
            self.pos, self.mode = j, "call"
            if j == len(self.text) and self.closing is None:
                self.mode = "done"  # a trailing separator
            return True
        if self.closing is not None and self.text.startswith(self.closing, i):
            self.pos, self.mode = i + len(self.closing), "closed"
            return True
        if self.closing is not None and not final and self.closing.startswith(self.text[i:]):
            return False
        self.pos, self.mode = i, "content"  # text after the calls
        return True
