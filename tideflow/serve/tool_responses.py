"""Tool calls in chat responses, as OpenAI shapes them: the message of a whole response
(`tool_message`) and the deltas of a stream (`ToolCallStream`), each choice's text read by its
`ToolPlan`'s parser.

A whole message carries `tool_calls` (ids "call_...") and the text outside them as `content`
(null when there is none). A stream sends that text as `content` deltas as soon as it is
known, and each call as one delta with its index, id, type, name and empty arguments, then
deltas carrying the next fragments of its arguments. A reply that stopped after calling tools
finishes with "tool_calls"; a named function's stays "stop", as OpenAI's and vLLM's do.
"""

from __future__ import annotations

import uuid

from tideflow.serve.tool_parsers import parse_whole
from tideflow.serve.tools import ToolPlan


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def finish_reason(plan: ToolPlan, reason: str | None, called: bool) -> str | None:
    if called and reason == "stop" and plan.choice != "named":
        return "tool_calls"
    return reason


def tool_message(plan: ToolPlan, text: str, reason: str | None) -> tuple[dict, str | None]:
    """The assistant message of one choice whose text is `text`, and its finish reason."""
    parsed = parse_whole(plan.output_parser(), text)
    calls = parsed.calls if plan.parallel else parsed.calls[:1]
    message = {"role": "assistant", "content": parsed.content if calls else parsed.content or ""}
    if calls:
        message["tool_calls"] = [{"id": call_id(), "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    return message, finish_reason(plan, reason, bool(calls))


class ToolCallStream:
    """One streamed choice read by its plan's parser (the plan must read calls)."""

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.parser = plan.output_parser()
        self.ids: list[str] = []  # call index -> its id, as the calls open

    @property
    def called(self) -> bool:
        return bool(self.ids)

    def deltas(self, text: str, final: bool) -> list[dict]:
        """The `delta` objects that the choice's next text (`final`: its last) lets out, in order."""
        parsed = self.parser.feed(text, final)
        out: list[dict] = []
        if parsed.content:
            out.append({"content": parsed.content})
        for call in parsed.calls:
            if call.index > 0 and not self.plan.parallel:
                continue
            if call.name is not None:
                self.ids.append(call_id())
                out.append({"tool_calls": [{"index": call.index, "id": self.ids[call.index], "type": "function",
                                            "function": {"name": call.name, "arguments": ""}}]})
            elif call.arguments:
                out.append({"tool_calls": [{"index": call.index, "function": {"arguments": call.arguments}}]})
        return out

    def finish_reason(self, reason: str | None) -> str | None:
        return finish_reason(self.plan, reason, self.called)
