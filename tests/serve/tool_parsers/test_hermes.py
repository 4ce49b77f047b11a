"""`hermes`: <tool_call>{json}</tool_call> blocks, whole and streamed (by character, by
random pieces and by the tiny tokenizer's tokens), the streamed deltas adding up to the whole
parse; JSON that is not a call stays content."""

from __future__ import annotations

import json

import pytest

from tideflow.serve.tool_parsers import CallDelta, FunctionCall, parse_whole, tool_parser_class

from .helpers import splits, stream, token_pieces

Hermes = tool_parser_class("hermes")

TWO_CALLS = (
    "I'll look both up.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": [1, 2]}}\n'
    "</tool_call>\n<tool_call>\n"
    '{"arguments": {"city": "Tōkyō \\"東京\\""}, "name": "local_time"}\n'
    "</tool_call>"
)
CASES = {
    "two calls after text": (TWO_CALLS, "I'll look both up.", [
        FunctionCall("get_weather", '{"city": "Paris", "unit": "celsius", "days": [1, 2]}'),
        FunctionCall("local_time", '{"city": "Tōkyō \\"東京\\""}'),
    ]),
    "a call alone": ('<tool_call>{"name": "f", "arguments": {}}</tool_call>', None, [FunctionCall("f", "{}")]),
    "no arguments key": ('<tool_call>{"name": "f"}</tool_call>', None, [FunctionCall("f", "{}")]),
    "no calls": ("  Just an answer, <b>bold</b>.\n", "  Just an answer, <b>bold</b>.\n", []),
    "text around a call": ('A <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>\n B ', "AB ",
                           [FunctionCall("f", '{"x": 1}')]),
    "not JSON": ("A <tool_call>not json</tool_call> B", "A <tool_call>not json</tool_call> B", []),
    "JSON but not a call": ('<tool_call>{"function": "f"}</tool_call>', '<tool_call>{"function": "f"}</tool_call>',
                            []),
    "arguments not an object": ('<tool_call>{"arguments": "x", "name": "f"}</tool_call>',
                                '<tool_call>{"arguments": "x", "name": "f"}</tool_call>', []),
    "a bad block beside a good one": (
        '<tool_call>{oops}</tool_call>\n<tool_call>{"name": "g", "arguments": {"a": true}}</tool_call>',
        "<tool_call>{oops}</tool_call>", [FunctionCall("g", '{"a": true}')]),
    "unclosed last block": ('<tool_call>{"name": "f", "arguments": {"a": [1]}}', None, [FunctionCall("f", '{"a": [1]}')]),
    "a tag's beginning at the end": ("Almost <tool_ca", "Almost <tool_ca", []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_whole_and_streamed_parses_agree(case):
    text, content, calls = CASES[case]
    whole = parse_whole(Hermes(), text)
    assert (whole.content, list(whole.calls)) == (content, calls)
    for call in whole.calls:
        assert isinstance(json.loads(call.arguments), dict)
    for seed, pieces in enumerate(splits(text, seed=len(text))):
        assert stream(Hermes, pieces)[0] == whole, (seed, pieces)


def test_streamed_by_tokens(tiny_model_dir):
    from tideflow.models.text_tokenizer import TextTokenizer

    pieces = token_pieces(TextTokenizer.from_dir(tiny_model_dir("llama")), TWO_CALLS)
    assert stream(Hermes, pieces)[0] == parse_whole(Hermes(), TWO_CALLS)


def test_a_call_streams_its_name_first_then_argument_fragments():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    _, deltas = stream(Hermes, list(text))
    calls = [c for d in deltas for c in d.calls]
    assert calls[0] == CallDelta(0, "get_weather", "")
    fragments = [c.arguments for c in calls[1:]]
    assert all(c.index == 0 and c.name is None for c in calls[1:])
    assert len(fragments) > 5 and "".join(fragments) == '{"city": "Paris"}'
    # the name goes out as soon as it is known, before the arguments are complete
    sent_at = next(k for k, d in enumerate(deltas) if d.calls)
    assert text[:sent_at + 1].endswith('"get_weather"')
    assert all(not d.content for d in deltas)


def test_content_streams_before_the_call_and_whitespace_touching_a_call_is_held():
    pieces = ["Checking", " now. ", "\n", "<tool", "_call>", '{"name": "f", "arguments": {}}', "</tool_call>"]
    _, deltas = stream(Hermes, pieces)
    assert [d.content for d in deltas] == ["Checking", " now.", "", "", "", "", "", ""]


def test_a_call_cut_off_after_its_name_went_out_ends_as_sent():
    # (the whole parse has the text as content: what a stream sent cannot be taken back)
    text = 'x <tool_call>{"name": "f", "arguments": {"a": 1'
    assert parse_whole(Hermes(), text).calls == ()
    streamed, _ = stream(Hermes, list(text))
    assert streamed.calls == (FunctionCall("f", '{"a": 1'),) and streamed.content == "x"
