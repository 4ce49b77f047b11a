"""Scanning JSON that is still being generated: where a value ends, or that the text so far
cannot be JSON at all.

A streamed tool call has to be sent before its JSON is complete, so the parsers need to tell
three cases apart at every step: the value is complete (and where it ends), the text is a
valid beginning of a value that has not ended yet, or it can never become JSON (`Malformed`).
`json.loads` only knows the first and lumps the other two together. The grammar is strict
JSON (RFC 8259), as `json.loads` reads it: no NaN, no comments, no control characters
inside strings.
"""

from __future__ import annotations

import re

_WS = re.compile(r"[ \t\n\r]*")
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]*')  # the characters a string holds as they are
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_PREFIX = re.compile(r"-?(?:0|[1-9][0-9]*)?(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?")
_LITERALS = ("true", "false", "null")
_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")


class Malformed(ValueError):
    """The text cannot be the beginning of a JSON value, whatever follows it."""


class _Incomplete(Exception):
    """The text ended inside the value (internal: `value_end` answers None)."""


def skip_ws(text: str, i: int) -> int:
    """The index of the first non-whitespace character at or after `i` (len(text) if none)."""
    return _WS.match(text, i).end()


def value_end(text: str, i: int) -> int | None:
    """The index just past the JSON value that starts at `text[i]`; None when the text ends
    before the value does; `Malformed` when no continuation makes it JSON. A number at the
    very end counts as unfinished (more digits may follow)."""
    try:
        return _value(text, i, 0)
    except _Incomplete:
        return None
    except RecursionError:  # a model that nests without end: no tool call is that deep
        raise Malformed("JSON nested too deeply") from None


def string_end(text: str, i: int) -> int | None:
    """`value_end` for a string that starts at `text[i]` (a `"`)."""
    try:
        return _string(text, i)
    except _Incomplete:
        return None


def _need(text: str, i: int) -> None:
    if i >= len(text):
        raise _Incomplete


def _value(text: str, i: int, depth: int) -> int:
    _need(text, i)
    c = text[i]
    if c == "{":
        return _container(text, i, depth, "}", keyed=True)
    if c == "[":
        return _container(text, i, depth, "]", keyed=False)
    if c == '"':
        return _string(text, i)
    if c == "-" or c.isdigit():
        return _number(text, i)
    for literal in _LITERALS:
        if text.startswith(literal, i):
            return i + len(literal)
        rest = text[i:i + len(literal)]
        if i + len(rest) == len(text) and literal.startswith(rest):  # "tr" at the very end
            raise _Incomplete
    raise Malformed(f"unexpected {c!r} at {i}")


def _container(text: str, i: int, depth: int, close: str, keyed: bool) -> int:
    if depth > 200:
        raise RecursionError
    i = skip_ws(text, i + 1)
    _need(text, i)
    if text[i] == close:
        return i + 1
    while True:
        if keyed:
            _need(text, i)
            if text[i] != '"':
                raise Malformed(f"expected a key at {i}")
            i = skip_ws(text, _string(text, i))
            _need(text, i)
            if text[i] != ":":
                raise Malformed(f"expected ':' at {i}")
            i = skip_ws(text, i + 1)
        i = skip_ws(text, _value(text, i, depth + 1))
        _need(text, i)
        if text[i] == close:
            return i + 1
        if text[i] != ",":
            raise Malformed(f"expected ',' or {close!r} at {i}")
        i = skip_ws(text, i + 1)


def _string(text: str, i: int) -> int:
    j = i + 1
    while True:
        j = _STRING_RUN.match(text, j).end()
        _need(text, j)
        c = text[j]
        if c == '"':
            return j + 1
        if c != "\\":
            raise Malformed(f"control character in a string at {j}")
        _need(text, j + 1)
        escape = text[j + 1]
        if escape in _ESCAPES:
            j += 2
        elif escape == "u":
            digits = text[j + 2:j + 6]
            if not all(d in _HEX for d in digits):
                raise Malformed(f"bad \\u escape at {j}")
            _need(text, j + 5)
            j += 6
        else:
            raise Malformed(f"bad escape at {j}")


def _number(text: str, i: int) -> int:
    whole = _NUMBER.match(text, i)
    prefix = _NUMBER_PREFIX.match(text, i)
    if prefix.end() == len(text):  # "12", "1.", "-" or "1e" at the end: more may come
        raise _Incomplete
    if whole is None or whole.end() != prefix.end():  # "1.x", "01", "-a"
        raise Malformed(f"bad number at {i}")
    return whole.end()
