"""The tool-parser interface: `ToolParser` finds tool calls in one completion's text as it
grows, and the records it answers with.

One parser serves both response shapes. A stream feeds it each new piece of text and sends
what comes back at once; a whole response feeds it the whole text in one call and joins the
pieces (`parse_whole`). Both go through the same code, so the streamed deltas add up to the
whole response's calls. They can differ in one case only: a call whose name was already
streamed turns out malformed or cut off later (what was sent cannot be taken back, so the
streamed call ends as it was sent, where the whole response has the text as content).

A call's arguments are the model's own JSON text of them, never re-serialised: a streamed
fragment is then always a prefix of the final arguments.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from tideflow.serve.tool_parsers.json_prefix import Malformed, skip_ws, string_end, value_end


@dataclass(slots=True)
class CallDelta:
    """What one tool call gained."""

    index: int  # the call's position among the completion's tool calls
    name: str | None  # the function's name: on the call's first delta only (its arguments then "")
    arguments: str  # the next piece of the arguments' JSON text


@dataclass(slots=True)
class ParserDelta:
    """What a `feed` yields: text that can be sent as content, then the calls' deltas in order."""

    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FunctionCall:
    name: str
    arguments: str  # JSON text of the arguments (an object)


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    """A whole completion, parsed."""

    content: str | None  # the text outside the calls; None when there is none
    calls: tuple[FunctionCall, ...]


@dataclass(frozen=True, slots=True)
class CallScan:
    """What a call object's text says so far."""

    name: str | None  # once its string is complete
    arguments: str | None  # the arguments' JSON text so far (a prefix of the final text); None before they start
    end: int | None  # the index just past the object's closing brace; None while it is open


class ContentText:
    """Text outside the calls, as it can be sent. Whitespace that touches a call is dropped
    ("I'll look it up.\\n<tool_call>..." has the content "I'll look it up."), so trailing
    whitespace is held back until something other than a call follows it."""

    def __init__(self):
        self.held = ""  # whitespace not yet known to stay
        self.after_call = False  # a call just ended: the next text loses its leading whitespace

    def add(self, text: str) -> str:
        """What of `text` can be sent now."""
        if self.after_call:
            text = text.lstrip()
            self.after_call = not text
        body = text.rstrip()
        if not body:
            self.held += text
            return ""
        out, self.held = self.held + body, text[len(body):]
        return out

    def call_started(self) -> None:
        self.held = ""

    def call_ended(self) -> None:
        self.after_call = True

    def finish(self) -> str:
        out, self.held = self.held, ""
        return out


class ToolParser(ABC):
    """Tool calls in one completion's text, found as the text grows. `feed` appends to
    `self.text` and advances the parser's state over it; a parser serves one completion."""

    def __init__(self):
        self.text = ""  # everything fed so far
        self._content = ContentText()
        self._count = 0  # calls opened so far
        self._sent: int | None = None  # characters of the open call's arguments sent; None: no call open

    def feed(self, text: str, final: bool = False) -> ParserDelta:
        """What `text` (the completion's next piece) lets the caller send. `final`: the
        completion has ended, so whatever was held back is decided now."""
        self.text += text
        out = ParserDelta()
        self._advance(out, final)
        if final:
            out.content += self._content.finish()
        return out

    @abstractmethod
    def _advance(self, out: ParserDelta, final: bool) -> None:
        """Consume what `self.text` decides past the parser's position, adding to `out`."""

    # -- for the formats ------------------------------------------------------------------------
    def _add_content(self, out: ParserDelta, text: str) -> None:
        out.content += self._content.add(text)

    @property
    def _call_open(self) -> bool:
        """Whether a call has been opened (its name sent) and not yet ended."""
        return self._sent is not None

    def _send_call(self, out: ParserDelta, scan: CallScan) -> None:
        """Send what `scan` adds to the current call, opening it once its name is known."""
        if self._sent is None:
            if scan.name is None:
                return
            out.calls.append(CallDelta(self._count, scan.name, ""))
            self._content.call_started()
            self._count += 1
            self._sent = 0
        arguments = scan.arguments or ""
        if scan.end is not None and scan.arguments is None:
            arguments = "{}"  # a call without arguments takes none
        if len(arguments) > self._sent:
            out.calls.append(CallDelta(self._count - 1, None, arguments[self._sent:]))
            self._sent = len(arguments)

    def _end_call(self) -> None:
        self._sent = None
        self._content.call_ended()


def parse_whole(parser: ToolParser, text: str) -> ParsedOutput:
    """A whole completion through a fresh `parser`."""
    return join_deltas([parser.feed(text, final=True)])


def join_deltas(deltas: list[ParserDelta]) -> ParsedOutput:
    """The content and calls that a parser's deltas add up to."""
    content = "".join(d.content for d in deltas)
    names: list[str] = []
    arguments: list[str] = []
    for d in deltas:
        for call in d.calls:
            if call.name is not None:
                names.append(call.name)
                arguments.append("")
            arguments[call.index] += call.arguments
    calls = tuple(FunctionCall(n, a) for n, a in zip(names, arguments))
    return ParsedOutput(content or None, calls)


def scan_call(text: str, i: int, argument_keys: tuple[str, ...]) -> CallScan:
    """The call object (`{"name": ..., <argument key>: {...}}`) that starts at `text[i]`
    (after whitespace), as far as the text goes. `Malformed` when it cannot become one: not an
    object, a name that is not a non-empty string, arguments that are not an object, or an
    object that ends without a name. Other keys are skipped."""
    i = skip_ws(text, i)
    if i == len(text):
        return CallScan(None, None, None)
    if text[i] != "{":
        raise Malformed(f"expected a call object at {i}")
    name: str | None = None
    arguments: str | None = None
    i = skip_ws(text, i + 1)
    if text.startswith("}", i):
        raise Malformed("a call object without a name")
    while True:
        if i == len(text):
            return CallScan(name, arguments, None)
        if text[i] != '"':
            raise Malformed(f"expected a key at {i}")
        key_end = string_end(text, i)
        if key_end is None:
            return CallScan(name, arguments, None)
        key = json.loads(text[i:key_end])
        i = skip_ws(text, key_end)
        if i == len(text):
            return CallScan(name, arguments, None)
        if text[i] != ":":
            raise Malformed(f"expected ':' at {i}")
        i = skip_ws(text, i + 1)
        if i == len(text):
            return CallScan(name, arguments, None)
        end = value_end(text, i)
        if key == "name" and name is None:
            if text[i] != '"':
                raise Malformed("the call's name is not a string")
            if end is None:
                return CallScan(None, arguments, None)
            name = json.loads(text[i:end])
            if not name:
                raise Malformed("the call's name is empty")
        elif key in argument_keys and arguments is None:
            if text[i] != "{":
                raise Malformed("the call's arguments are not an object")
            arguments = text[i:end] if end is not None else text[i:]
        if end is None:
            return CallScan(name, arguments, None)
        i = skip_ws(text, end)
        if i == len(text):
            return CallScan(name, arguments, None)
        if text[i] == "}":
            if name is None:
                raise Malformed("a call object without a name")
            return CallScan(name, arguments, i + 1)
        if text[i] != ",":
            raise Malformed(f"expected ',' or '}}' at {i}")
        i = skip_ws(text, i + 1)
