"""`json_prefix`: a complete value's end, None for every unfinished beginning of one, and
Malformed exactly where no continuation can make JSON, in agreement with `json.loads`."""

from __future__ import annotations

import json

import pytest

from tideflow.serve.tool_parsers.json_prefix import Malformed, value_end

VALID = [
    '{"city": "Paris", "days": [1, 2.5, -3e2, 0.0E-1], "ok": true, "none": null, "no": false}',
    '{"text": "a \\"quoted\\" \\\\ line\\nbreak \\u00e9\\ud83d\\ude00 \\/", "empty": {}, "list": []}',
    '[ {"a" : { "b" : [ [ ] , { } ] } } , "x" ]',
    '"just a string"',
    '{"unicode": "中文 👋"}',
]
MALFORMED = [
    '{"a" 1}', "{a: 1}", '{"a": 1,}', "[1,]", "[1 2]", '{"a": tru}', '{"a": nulx}', "[01]", "[-]x", "[1.]",
    "[1.e5]", '["\\q"]', '["\\u12g4"]', '["tab\there"]', "{,}", "{'a': 1}", "[1}",
]


@pytest.mark.parametrize("doc", VALID)
def test_a_valid_value_ends_where_json_says_and_its_prefixes_are_unfinished(doc):
    json.loads(doc)  # the case itself is JSON
    assert value_end(doc, 0) == len(doc)
    assert value_end(doc + ' , "more"', 0) == len(doc)
    assert value_end("xx" + doc, 2) == len(doc) + 2
    for k in range(1, len(doc)):
        assert value_end(doc[:k], 0) is None, doc[:k]


@pytest.mark.parametrize("doc", MALFORMED)
def test_malformed_text_is_refused_as_soon_as_it_cannot_be_json(doc):
    with pytest.raises(ValueError):
        json.loads(doc)
    with pytest.raises(Malformed):
        value_end(doc + "]}" * 3, 0)  # no continuation helps


def test_only_strict_json_counts():  # json.loads takes NaN and Infinity; a call's arguments may not
    for doc in ("[NaN]", "[Infinity]", "[-Infinity]"):
        with pytest.raises(Malformed):
            value_end(doc, 0)


def test_a_number_at_the_end_may_still_grow():
    assert value_end("12", 0) is None
    assert value_end("-", 0) is None
    assert value_end("1e", 0) is None
    assert value_end("12 ", 0) == 2


def test_endless_nesting_is_malformed_not_a_crash():
    with pytest.raises(Malformed):
        value_end("[" * 5000, 0)
