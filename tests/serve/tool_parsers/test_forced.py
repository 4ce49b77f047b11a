"""The outputs tool_choice forces: `required`'s JSON array of {name, parameters} and a named
function's arguments, read back as calls, whole and streamed alike."""

from __future__ import annotations

import pytest

from tideflow.serve.tool_parsers import CallDelta, FunctionCall, parse_whole
from tideflow.serve.tool_parsers.forced import NamedToolParser, RequiredToolParser

from .helpers import splits, stream

CASES = {
    "two calls": ('[{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": {"b": [true]}}]', None,
                  [FunctionCall("f", '{"a": 1}'), FunctionCall("g", '{"b": [true]}')]),
    "spaced": ('\n [ {"parameters": {}, "name": "f"} ] \n', None, [FunctionCall("f", "{}")]),
    "not an array": ('{"name": "f", "parameters": {}}', '{"name": "f", "parameters": {}}', []),
    "empty array": ("[]", "[]", []),
    "cut off before a name": ('[{"parameters": {"a": 1', '[{"parameters": {"a": 1', []),
    "unclosed array": ('[{"name": "f", "parameters": {}}', None, [FunctionCall("f", "{}")]),
    "text after": ('[{"name": "f", "parameters": {}}] ok', "ok", [FunctionCall("f", "{}")]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_required_arrays(case):
    text, content, calls = CASES[case]
    whole = parse_whole(RequiredToolParser(), text)
    assert (whole.content, list(whole.calls)) == (content, calls)
    for pieces in splits(text, seed=3):
        assert stream(RequiredToolParser, pieces)[0] == whole


def test_a_named_function_takes_the_whole_output_as_its_arguments():
    text = '{"city": "Paris"}'
    whole = parse_whole(NamedToolParser("get_weather"), text)
    assert whole == parse_whole(NamedToolParser("get_weather"), text)
    assert (whole.content, whole.calls) == (None, (FunctionCall("get_weather", text),))
    streamed, deltas = stream(lambda: NamedToolParser("get_weather"), ["{", '"city"', ': "Paris"}'])
    assert streamed == whole
    assert deltas[0].calls == [CallDelta(0, "get_weather", ""), CallDelta(0, None, "{")]
