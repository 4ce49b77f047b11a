"""`hermes`: calls as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, the
format of Hermes-2-Pro and of Qwen2.5- and SmolLM3-style chat templates.

Text outside the blocks is content (whitespace next to a block dropped); a model may write
several blocks. A block whose JSON is not a call stays in the content as the model wrote it.
A last block without its closing tag is still a call when its JSON is complete, since
generation may stop right after the object.

The tags must reach the text: where a vocabulary makes `<tool_call>` a special token
(Hermes-2-Pro's does; Qwen2.5's does not), the request needs `skip_special_tokens: false`.
"""

from __future__ import annotations

from tideflow.serve.tool_parsers.base import ParserDelta, ToolParser, scan_call
from tideflow.serve.tool_parsers.json_prefix import Malformed

START = "<tool_call>"
END = "</tool_call>"


def _partial_tag(text: str, tag: str) -> int:
    """How many characters at the end of `text` could begin `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class HermesToolParser(ToolParser):
    def __init__(self):
        super().__init__()
        self.pos = 0  # everything before is decided
        self.block = 0  # where the open block's JSON starts
        # "outside" a block | in a "call" block | a block that is not a call: its text is
        # "content" | the rest of a block whose call was cut short is "dropped"
        self.mode = "outside"

    def _advance(self, out: ParserDelta, final: bool) -> None:
        while True:
            if self.mode == "outside":
                start = self.text.find(START, self.pos)
                if start < 0:
                    keep = 0 if final else _partial_tag(self.text, START)  # what may begin a tag
                    self._add_content(out, self.text[self.pos:len(self.text) - keep])
                    self.pos = len(self.text) - keep
                    return
                self._add_content(out, self.text[self.pos:start])
                self.block = self.pos = start + len(START)
                self.mode = "call"
            if not self._in_block(out, final):
                return

    def _in_block(self, out: ParserDelta, final: bool) -> bool:
        """Advance inside the open block; whether it closed (the loop goes on after it)."""
        end = self.text.find(END, self.block)
        closed = end >= 0
        if not closed:
            end = len(self.text) - (0 if final else _partial_tag(self.text, END))
        after = end + len(END) if closed else end
        if self.mode == "call":
            try:
                scan = scan_call(self.text[self.block:end], 0, ("arguments",))
                if scan.end is not None and self.text[self.block + scan.end:end].strip():
                    raise Malformed("text after the call object")
            except Malformed:
                scan = None
            ended = closed or final
            if scan is not None and (scan.end is not None or not ended):
                self._send_call(out, scan)
                if scan.end is None or not ended:
                    return False
                self._end_call()
            elif self._call_open:  # its name went out already: the call ends as it was sent
                self._end_call()
                self.mode = "dropped"
            else:  # not a call (or one cut off): the block's text is content
                self.mode = "content"
                self.pos = self.block - len(START)
        if self.mode == "content":
            self._add_content(out, self.text[self.pos:after])
        self.pos = after
        if closed:
            self.mode = "outside"
        return closed
