"""A structured-output constraint as llguidance's grammar text, validated without a tokenizer.

JSON schemas compile to compact JSON (no whitespace between tokens: llguidance's
`whitespace_flexible` off). A model may otherwise spend its tokens on whitespace, and a small
one often loops on it until max_tokens cuts the JSON short; vLLM added `disable_any_whitespace`
for the same reason. A schema can ask for flexible whitespace itself with
`"x-guidance": {"whitespace_flexible": true}`, which llguidance lays over these defaults.
"""

from __future__ import annotations

import json

from tideflow.sampling_params import StructuredOutputsParams

JSON_DEFAULTS = {"whitespace_flexible": False}  # compact JSON (see the module docstring)
ANY_OBJECT = {"type": "object"}  # json_object: any JSON object


def grammar_key(spec: StructuredOutputsParams) -> tuple[str, str]:
    """(kind, text): what identifies a constraint's grammar. A JSON schema's keys keep their
    order: properties are generated in the order the schema lists them."""
    kind = spec.kind
    value = getattr(spec, kind)
    if kind == "json":
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    elif kind == "json_object":
        text = ""
    elif kind == "choice":
        text = json.dumps(list(value))
    else:
        text = value
    return kind, text


def compile_grammar(spec: StructuredOutputsParams) -> str:
    """llguidance's grammar text for `spec`. ValueError "structured_outputs.<kind>: <why>" when
    it does not compile (a schema that is not JSON or not valid, a bad regex, Lark or GBNF)."""
    from llguidance import LLMatcher, grammar_from

    kind, text = grammar_key(spec)
    where = f"structured_outputs.{kind}"
    try:
        if kind == "json":
            schema = json.loads(text)
            if not isinstance(schema, dict):
                raise ValueError(f"a JSON schema is an object, got {type(schema).__name__}")
            grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)
        elif kind == "json_object":
            grammar = LLMatcher.grammar_from_json_schema(ANY_OBJECT, defaults=JSON_DEFAULTS)
        elif kind == "regex":
            grammar = LLMatcher.grammar_from_regex(text)
        elif kind == "choice":
            grammar = grammar_from("choice", list(spec.choice))
        else:  # Lark, or GBNF (llama.cpp's EBNF) converted to Lark
            grammar = grammar_from("grammar", text)
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{where}: {_first_line(exc)}") from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise ValueError(f"{where}: {_first_line(error)}")
    return grammar


def _first_line(error) -> str:
    """The message without the grammar text llguidance quotes under a caret: its first line and
    any `error: ...` line (a regex's reason comes there)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or ["invalid"]
    return " ".join([lines[0], *(line for line in lines[1:] if line.startswith("error:"))])
