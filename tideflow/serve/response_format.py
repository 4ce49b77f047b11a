"""A request's output constraint: OpenAI's `response_format` or vLLM's `structured_outputs`
field, as one `StructuredOutputsParams`.

Its grammar is compiled here (tokenizer-free, `tideflow.runtime.engine.structured.grammar`),
so a schema, regex or grammar that does not compile is a 400 naming the field it came in,
before anything is queued. The engine compiles it again against its tokenizer, once per grammar.
"""

from __future__ import annotations

from tideflow.runtime.engine.structured.grammar import compile_grammar
from tideflow.sampling_params import STRUCTURED_KINDS, StructuredOutputsParams
from tideflow.serve.errors import bad_request
from tideflow.serve.protocol import ResponseFormat, StructuredOutputsField

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


def request_constraint(response_format: ResponseFormat | None,
                       structured_outputs: StructuredOutputsField | None) -> StructuredOutputsParams | None:
    """The constraint a request asks for (None: free text). APIError 400 naming
    `response_format` or `structured_outputs` when it is malformed or does not compile."""
    from_format = _from_response_format(response_format) if response_format is not None else None
    from_field = _from_structured_outputs(structured_outputs) if structured_outputs is not None else None
    if from_format is not None and from_field is not None:
        raise bad_request("give either 'response_format' or 'structured_outputs', not both", "structured_outputs")
    spec, param = (from_format, "response_format") if from_format is not None else (from_field, "structured_outputs")
    if spec is None:
        return None
    try:
        compile_grammar(spec)
    except ValueError as exc:  # "structured_outputs.json: Invalid type: nosuch"
        where, _, why = str(exc).partition(": ")
        where = "response_format.json_schema.schema" if param == "response_format" and spec.kind == "json" else where
        raise bad_request(f"'{where}' does not compile: {why}", param) from None
    return spec


def _from_response_format(fmt: ResponseFormat) -> StructuredOutputsParams | None:
    if fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    if fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise bad_request("response_format of type 'json_schema' needs 'json_schema': {'name', 'schema'}",
                              "response_format", code="missing_required_parameter")
        return StructuredOutputsParams(json=fmt.json_schema.schema_)
    raise bad_request(f"response_format type must be one of {list(RESPONSE_FORMAT_TYPES)}, got {fmt.type!r}",
                      "response_format")


def _from_structured_outputs(field: StructuredOutputsField) -> StructuredOutputsParams:
    given = {k: v for k, v in ((k, getattr(field, "json_" if k == "json" else k)) for k in STRUCTURED_KINDS)
             if v is not None}
    try:
        return StructuredOutputsParams(**given)
    except ValueError as exc:  # none or several kinds, an empty choice or regex
        raise bad_request(str(exc), "structured_outputs") from None
