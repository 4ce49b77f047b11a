"""`tideflow.serve.tools`: what tools and tool_choice ask for, checked before anything runs;
the JSON schemas that `required` and named choices constrain the output with (each accepts
exactly the calls it should, checked with jsonschema); and an assistant's tool calls as chat
templates read them."""

from __future__ import annotations

import jsonschema
import pytest

from tideflow.sampling_params import SamplingParams, StructuredOutputsParams
from tideflow.serve.errors import APIError
from tideflow.serve.protocol import ChatCompletionRequest, ChatMessage
from tideflow.serve.tool_parsers.forced import NamedToolParser, RequiredToolParser
from tideflow.serve.tool_parsers.hermes import HermesToolParser
from tideflow.serve.tools import NO_PARAMETERS, template_tool_calls, tool_plan

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "local_time"}}  # no parameters
USER = [{"role": "user", "content": "hi"}]


def request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": USER, **fields}, strict=True)


def refused(param: str, parser: str | None = None, **fields) -> str:
    with pytest.raises(APIError) as exc:
        tool_plan(request(**fields), parser)
    assert (exc.value.status, exc.value.param) == (400, param)
    return exc.value.message


def test_choices_and_their_defaults():
    assert tool_plan(request(), None) is None
    assert tool_plan(request(tool_choice="none"), None) is None
    plan = tool_plan(request(tools=[WEATHER, TIME]), "hermes")  # tools without a choice: "auto"
    assert (plan.choice, plan.parser, plan.parallel) == ("auto", "hermes", True)
    assert isinstance(plan.output_parser(), HermesToolParser) and plan.constraint() is None
    # the template gets the tools as OpenAI's objects, unset fields left out
    assert plan.tools == (WEATHER, {"type": "function", "function": {"name": "local_time"}})
    none = tool_plan(request(tools=[WEATHER], tool_choice="none"), None)
    assert none.tools == (WEATHER,) and not none.reads_calls and none.output_parser() is None
    named = tool_plan(request(tools=[WEATHER, TIME], parallel_tool_calls=False,
                              tool_choice={"type": "function", "function": {"name": "get_weather"}}), None)
    assert (named.choice, named.function, named.parser, named.parallel) == ("named", "get_weather", None, False)
    assert isinstance(named.output_parser(), NamedToolParser)
    assert isinstance(tool_plan(request(tools=[TIME], tool_choice="required"), None).output_parser(),
                      RequiredToolParser)


def test_mistakes_are_400s_naming_the_field():
    assert "needs 'tools'" in refused("tool_choice", tool_choice="required")
    refused("tool_choice", tool_choice="auto")
    refused("tool_choice", tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert "'nope'" in refused("tool_choice", tools=[WEATHER], tool_choice={"type": "function",
                                                                         "function": {"name": "nope"}})
    assert "--tool-call-parser" in refused("tool_choice", tools=[WEATHER])
    assert "--tool-call-parser" in refused("tool_choice", tools=[WEATHER], tool_choice="auto")
    assert "twice" in refused("tools", "hermes", tools=[WEATHER, WEATHER])
    refused("tools", "hermes", tools=[{"type": "function", "function": {"name": ""}}])


def test_a_named_function_is_held_to_its_parameters():
    named = tool_plan(request(tools=[WEATHER, TIME], tool_choice={"type": "function",
                                                                  "function": {"name": "get_weather"}}), None)
    schema = named.constraint().json
    assert schema == WEATHER["function"]["parameters"]
    jsonschema.validate({"city": "Paris", "unit": "C"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"unit": "C"}, schema)
    no_params = tool_plan(request(tools=[TIME], tool_choice={"type": "function", "function": {"name": "local_time"}}),
                          None)
    assert no_params.constraint().json == NO_PARAMETERS


@pytest.mark.parametrize("parallel", [True, False])
def test_required_takes_an_array_of_calls_to_the_tools(parallel):
    plan = tool_plan(request(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=parallel), None)
    schema = plan.constraint().json
    jsonschema.Draft202012Validator.check_schema(schema)
    one = [{"name": "get_weather", "parameters": {"city": "Paris"}}]
    two = one + [{"name": "local_time", "parameters": {}}]
    jsonschema.validate(one, schema)
    for bad in ([], [{"name": "get_weather", "parameters": {}}],  # misses the required city
                [{"name": "send_mail", "parameters": {}}], [{"name": "local_time"}],
                [{"name": "local_time", "parameters": {}, "extra": 1}], {"name": "local_time", "parameters": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    if parallel:
        jsonschema.validate(two, schema)
    else:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(two, schema)


def test_the_constraint_goes_on_the_sampling_params_and_will_not_replace_another():
    plan = tool_plan(request(tools=[WEATHER], tool_choice="required"), None)
    params = plan.sampling(SamplingParams(max_tokens=5))
    assert params.structured_outputs == plan.constraint() and params.max_tokens == 5
    auto = tool_plan(request(tools=[WEATHER]), "hermes")
    assert auto.sampling(SamplingParams()).structured_outputs is None
    with pytest.raises(APIError) as exc:
        plan.sampling(SamplingParams(structured_outputs=StructuredOutputsParams(json_object=True)))
    assert exc.value.param == "tool_choice"


def test_history_tool_calls_reach_the_template_with_parsed_arguments():
    message = ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "function": {"name": "local_time", "arguments": ""}},
    ]}, strict=True)
    assert template_tool_calls(2, message.tool_calls) == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call_2", "type": "function", "function": {"name": "local_time", "arguments": {}}},
    ]
    bad = ChatMessage.model_validate({"role": "assistant", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": "{city: Paris"}}]}, strict=True)
    with pytest.raises(APIError) as exc:
        template_tool_calls(3, bad.tool_calls)
    assert exc.value.param == "messages" and "messages[3].tool_calls[0]" in exc.value.message
