"""`llama3_json`: {"name", "parameters"} objects, maybe after <|python_tag|>, separated by
';'; an output that does not begin with a call is content. Whole and streamed agree."""

from __future__ import annotations

import pytest

from tideflow.serve.tool_parsers import FunctionCall, parse_whole, tool_parser_class

from .helpers import splits, stream, token_pieces

Llama3 = tool_parser_class("llama3_json")

TWO_CALLS = ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris; France"}}; '
             '{"name": "local_time", "parameters": {"city": "Rome"}}')
CASES = {
    "two calls after the tag": (TWO_CALLS, None, [FunctionCall("get_weather", '{"city": "Paris; France"}'),
                                                   FunctionCall("local_time", '{"city": "Rome"}')]),
    "no tag (skipped special tokens)": ('\n{"name": "f", "parameters": {"a": 1}}', None, [FunctionCall("f", '{"a": 1}')]),
    "arguments for parameters": ('{"name": "f", "arguments": {"a": 1}}', None, [FunctionCall("f", '{"a": 1}')]),
    "a trailing separator": ('{"name": "f", "parameters": {}};', None, [FunctionCall("f", "{}")]),
    "plain text": ("The weather is fine.", "The weather is fine.", []),
    "text before a call": ('Sure! {"name": "f", "parameters": {}}', 'Sure! {"name": "f", "parameters": {}}', []),
    "malformed first call": ('<|python_tag|>{"name": f}', '<|python_tag|>{"name": f}', []),
    "text after the calls": ('{"name": "f", "parameters": {}}\nDone.', "Done.", [FunctionCall("f", "{}")]),
    "a malformed second call": ('{"name": "f", "parameters": {}}; {"nam": 1}', '{"nam": 1}', [FunctionCall("f", "{}")]),
    "a tag alone": ("<|python_tag|>", "<|python_tag|>", []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_whole_and_streamed_parses_agree(case):
    text, content, calls = CASES[case]
    whole = parse_whole(Llama3(), text)
    assert (whole.content, list(whole.calls)) == (content, calls)
    for pieces in splits(text, seed=len(text)):
        assert stream(Llama3, pieces)[0] == whole, pieces


def test_streamed_by_tokens(tiny_model_dir):
    from tideflow.models.text_tokenizer import TextTokenizer

    pieces = token_pieces(TextTokenizer.from_dir(tiny_model_dir("llama")), TWO_CALLS)
    assert stream(Llama3, pieces)[0] == parse_whole(Llama3(), TWO_CALLS)


def test_the_second_call_gets_the_next_index():
    _, deltas = stream(Llama3, list(TWO_CALLS))
    names = [(c.index, c.name) for d in deltas for c in d.calls if c.name]
    assert names == [(0, "get_weather"), (1, "local_time")]
