"""Feeding a parser the way a stream does, and the pieces a stream comes in."""

from __future__ import annotations

import random

from tideflow.serve.tool_parsers import ParsedOutput, ParserDelta, join_deltas


def stream(make_parser, pieces: list[str]) -> tuple[ParsedOutput, list[ParserDelta]]:
    """What a fresh parser's deltas add up to when fed `pieces` one by one, then the end."""
    parser = make_parser()
    deltas = [parser.feed(p) for p in pieces] + [parser.feed("", final=True)]
    return join_deltas(deltas), deltas


def splits(text: str, seed: int) -> list[list[str]]:
    """`text` in one-character pieces and in random pieces of 1 to 7 characters."""
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 7)
        pieces.append(text[i:i + n])
        i += n
    return [list(text), pieces]


def token_pieces(tokenizer, text: str) -> list[str]:
    """`text` as a detokenizer streams it: what each token adds to the decoded text."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces, before = [], ""
    for k in range(1, len(ids) + 1):
        now = tokenizer.decode(ids[:k])
        if now.endswith("\ufffd"):  # half a character: the detokenizer waits for the rest
            continue
        pieces.append(now[len(before):])
        before = now
    assert before == text
    return pieces
