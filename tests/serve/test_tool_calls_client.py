"""Forced tool calls on the real server with the `openai` client: `tool_choice="required"` and
a named function make even a random tiny model call a tool, because the output is held to a
JSON schema built from the tools (the engine's structured outputs); the arguments validate
against the tool's own schema, and a streamed call reassembles to the non-streamed one.

The tools' schemas are closed (enums, bounded integers, no extra keys) so that a random model
finishes its JSON well within max_tokens.

Until the engine enforces `SamplingParams.structured_outputs` (issue 20, point 1, on its own
branch) the output is the random model's free text, so these fail; they are marked as
expected failures, strictly, so that the merge that brings the constraint must drop the mark."""

from __future__ import annotations

import json

import jsonschema
import pytest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                   "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
TIME = {"type": "function", "function": {
    "name": "local_time", "description": "The time in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}}}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MESSAGES = [{"role": "user", "content": "What's the weather in Paris?"}]



@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="any", max_retries=0, timeout=120)


def calls_of(message) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in message.tool_calls or ()]


def assert_valid(calls: list[tuple[str, str]]) -> None:
    assert calls, "no tool call"
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_required_calls_validate_against_the_tools_schemas(client, server, seed):
    out = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                         max_tokens=300, temperature=1.0, seed=seed)
    choice = out.choices[0]
    assert_valid(calls_of(choice.message))
    assert choice.finish_reason == "tool_calls"
    assert all(c.id.startswith("call_") and c.type == "function" for c in choice.message.tool_calls)


def test_required_with_parallel_tool_calls_false_makes_one_call(client, server):
    out = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                         parallel_tool_calls=False, max_tokens=300, temperature=1.0, seed=5)
    calls = calls_of(out.choices[0].message)
    assert len(calls) == 1
    assert_valid(calls)


@pytest.mark.parametrize("name", ["get_weather", "local_time"])
def test_a_named_function_is_called_with_valid_arguments(client, server, name):
    out = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, max_tokens=300,
                                         tool_choice={"type": "function", "function": {"name": name}}, temperature=0)
    choice = out.choices[0]
    calls = calls_of(choice.message)
    assert [n for n, _ in calls] == [name]
    assert_valid(calls)
    assert choice.finish_reason == "stop" and choice.message.content is None


def test_streamed_tool_call_deltas_reassemble_to_the_non_streamed_call(client, server):
    kwargs = dict(model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=300,
                  temperature=0)
    whole = client.chat.completions.create(**kwargs)
    calls: list[list[str]] = []
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                if delta.id is not None:
                    assert delta.index == len(calls) and delta.function.arguments == ""
                    calls.append([delta.function.name, ""])
                else:
                    calls[delta.index][1] += delta.function.arguments
            finish = choice.finish_reason or finish
    assert [tuple(c) for c in calls] == calls_of(whole.choices[0].message)
    assert_valid(calls_of(whole.choices[0].message))
    assert finish == whole.choices[0].finish_reason == "tool_calls"
