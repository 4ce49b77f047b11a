"""A chat request's `tools`, `tool_choice` and `parallel_tool_calls`, checked and turned into a
`ToolPlan`: what the chat template gets, which grammar holds the output, how the output is read.

As vLLM's server: `tools` go to the template whatever the choice; `"none"` reads the output as
plain content; `"auto"` (the default when tools are given) reads it with the server's
`--tool-call-parser`, and without one it is a 400; `"required"` and a named function constrain
the output with a JSON schema (`SamplingParams.structured_outputs`) and read it back as calls:
a named function's output is its arguments, `required`'s a JSON array of
`{"name", "parameters"}` objects, one schema branch per tool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tideflow.runtime.engine.structured.grammar import compile_grammar
from tideflow.sampling_params import SamplingParams, StructuredOutputsParams
from tideflow.serve.errors import bad_request
from tideflow.serve.tool_parsers import ToolParser, tool_parser_class
from tideflow.serve.tool_parsers.forced import NamedToolParser, RequiredToolParser

# a function that declares no parameters takes an object all the same (OpenAI's reading)
NO_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one chat request uses its tools."""

    tools: tuple[dict, ...]  # the template's `tools`: {"type": "function", "function": {name, description, parameters}}
    choice: str  # "none" | "auto" | "required" | "named"
    function: str | None  # the named function (choice "named")
    parallel: bool  # several calls may come back (False: at most one)
    parser: str | None  # the tool-call parser's name (choice "auto")

    def parameters(self, name: str) -> dict:
        """The JSON schema of function `name`'s arguments."""
        function = next(t["function"] for t in self.tools if t["function"]["name"] == name)
        return function.get("parameters") or NO_PARAMETERS

    def constraint(self) -> StructuredOutputsParams | None:
        """The grammar that `required` and named choices put on the output; None for the others."""
        if self.choice == "named":
            return StructuredOutputsParams(json=self.parameters(self.function))
        if self.choice != "required":
            return None
        branches = [{
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                           "parameters": self.parameters(t["function"]["name"])},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        } for t in self.tools]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": branches}}
        if not self.parallel:
            schema["maxItems"] = 1
        return StructuredOutputsParams(json=schema)

    @property
    def reads_calls(self) -> bool:
        """Whether replies are read for tool calls (all choices but "none")."""
        return self.choice != "none"

    def output_parser(self) -> ToolParser | None:
        """A fresh parser for one completion's text; None when the text is plain content."""
        if self.choice == "named":
            return NamedToolParser(self.function)
        if self.choice == "required":
            return RequiredToolParser()
        if self.choice == "auto":
            return tool_parser_class(self.parser)()
        return None

    def sampling(self, params: SamplingParams) -> SamplingParams:
        """`params` with the choice's constraint (a 400 when the request has one already)."""
        constraint = self.constraint()
        if constraint is None:
            return params
        if params.structured_outputs is not None:
            raise bad_request(f"tool_choice {self.choice_text()} constrains the output itself; it cannot be combined "
                              "with response_format or structured_outputs", "tool_choice")
        try:  # a tool's parameters schema the grammar engine refuses: the client's tools are wrong
            compile_grammar(constraint)
        except ValueError as exc:
            raise bad_request(f"the tools' parameters schemas do not compile: {exc}", "tools") from None
        return params.replace(structured_outputs=constraint)

    def choice_text(self) -> str:
        return f"function {self.function!r}" if self.choice == "named" else repr(self.choice)


def tool_plan(req, parser: str | None) -> ToolPlan | None:
    """The `ToolPlan` of a `ChatCompletionRequest` (None when it has no tools and no choice);
    `parser`: the server's --tool-call-parser. Mistakes are 400s naming `tools` or `tool_choice`."""
    choice = req.tool_choice
    if not req.tools:
        if choice is None or choice == "none":
            return None
        raise bad_request("'tool_choice' needs 'tools'", "tool_choice")
    tools = tuple(t.model_dump(exclude_none=True) for t in req.tools)
    names = [t["function"]["name"] for t in tools]
    for i, name in enumerate(names):
        if not name:
            raise bad_request(f"tools[{i}].function.name must not be empty", "tools")
        if name in names[:i]:
            raise bad_request(f"tools[{i}]: function {name!r} is declared twice", "tools")
    function = None
    if choice is None:
        choice = "auto"
    elif not isinstance(choice, str):  # {"type": "function", "function": {"name": ...}}
        function = choice.function.name
        if function not in names:
            raise bad_request(f"tool_choice names function {function!r}, which is not in 'tools' ({names})",
                              "tool_choice")
        choice = "named"
    if choice == "auto" and parser is None:
        raise bad_request('"auto" tool choice needs the server to be started with --tool-call-parser '
                          "(tool_choice \"required\", \"none\" or a named function work without one)", "tool_choice",
                          code="unsupported_parameter")
    return ToolPlan(tools, choice, function, req.parallel_tool_calls, parser if choice == "auto" else None)


def template_tool_calls(i: int, calls) -> list[dict]:
    """An assistant message's `tool_calls` as chat templates read them: each call's
    `function.arguments` parsed from its JSON text ("" as no arguments), as vLLM passes them,
    since templates write them with `tojson`. Text that is not JSON is a 400 naming `messages`."""
    out = []
    for j, call in enumerate(calls):
        text = call.function.arguments
        try:
            arguments = json.loads(text) if text.strip() else {}
        except ValueError:
            raise bad_request(f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON", "messages") from None
        out.append({"id": call.id, "type": call.type, "function": {"name": call.function.name, "arguments": arguments}})
    return out
