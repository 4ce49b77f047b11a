"""The request bodies of `/v1/completions` and `/v1/chat/completions`, as OpenAI (and vLLM's
extra sampling fields) define them.

Parsed in pydantic's strict mode, so a field of the wrong type (`"max_tokens": "5"`,
`"n": 1.5`, `"stream": 1`) is a 400 rather than silently coerced; numbers must be finite.
Unknown fields are ignored, as vLLM and OpenAI do. Range checks (temperature >= 0 ...) are
`tideflow.serve.prepare`'s job, where the model's limits are known.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False  # one more chunk at the end: empty `choices`, the request's usage


class JSONSchemaFormat(_Body):
    """`response_format.json_schema` (OpenAI's structured outputs)."""

    name: str | None = None  # OpenAI requires it; it names the schema and changes nothing here
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # the JSON schema the output must validate against
    strict: bool | None = None  # accepted: the output always follows the schema


class ResponseFormat(_Body):
    type: str  # "text" | "json_object" | "json_schema"
    json_schema: JSONSchemaFormat | None = None  # with type "json_schema"


class StructuredOutputsField(_Body):
    """vLLM's `structured_outputs` extra field: exactly one constraint (its other options are ignored)."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")  # a JSON schema, or its text
    json_object: bool | None = None  # any JSON object
    regex: str | None = None
    choice: list[str] | None = None  # one of these strings
    grammar: str | None = None  # Lark, or GBNF


class _Sampling(_Body):
    """Fields both endpoints share."""

    model: str | None = None  # None -> the served model
    n: int = 1  # completions per prompt
    # unset sampling fields (None) take the model's generation-config default, else the API's
    temperature: float | None = None  # None -> the model's default, else 1.0
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (a string, as OpenAI's) -> bias, clamped to [-100, 100]
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored
    # vLLM's extra sampling fields
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    return_tokens_as_token_ids: bool = False  # logprob tokens as "token_id:123"
    allowed_token_ids: list[int] | None = None  # only these tokens may be generated
    bad_words: list[str] | None = None  # words never generated
    prompt_logprobs: int | None = None  # top logprobs per prompt token (completions: `prompt_logprobs` per choice)
    response_format: ResponseFormat | None = None  # "text", or JSON output: "json_object" / "json_schema"
    structured_outputs: StructuredOutputsField | None = None  # vLLM's: json, json_object, regex, choice or grammar


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16  # unset -> the model's default, else 16; null -> up to the context length
    logprobs: int | None = None  # top logprobs per generated token
    echo: bool = False  # the prompt's text before each completion
    best_of: int | None = None  # only == n (or unset) is supported
    suffix: str | None = None  # not supported


class ImageURL(_Body):
    url: str  # only `data:image/...;base64,...` URLs: the server fetches nothing
    detail: str | None = None  # accepted and ignored


class ContentPart(_Body):
    type: str  # "text" | "image_url"
    text: str | None = None  # type "text"
    image_url: ImageURL | None = None  # type "image_url"


class ToolCallFunction(_Body):
    name: str
    arguments: str  # the arguments' JSON text


class ToolCall(_Body):
    """A call an assistant message made (in the history a client sends back)."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


ROLES = ("system", "developer", "user", "assistant", "tool")  # OpenAI's chat roles (not the deprecated "function")


class ChatMessage(_Body):
    role: Literal[ROLES]  # any other role is a 400 naming messages
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # role "assistant": the calls it made (content may be null)
    tool_call_id: str | None = None  # role "tool": the call this message answers


class FunctionDefinition(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON schema of the arguments; None -> an object of anything
    # accepted and ignored: required/named choices always hold to the schema (a grammar), "auto" never does
    strict: bool | None = None


class ChatTool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    """`tool_choice` naming the one function the reply must call."""

    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_tokens: int | None = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[ChatTool] | None = None  # functions the model may call (given to the chat template)
    # None -> "auto" with tools, else "none" (tideflow.serve.tools)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True  # False: at most one call per reply


class ErrorObject(BaseModel):
    message: str
    type: str  # invalid_request_error | rate_limit_error | server_error
    param: str | None  # the request field at fault, when one is
    code: str | None  # e.g. invalid_value, context_length_exceeded, invalid_api_key, rate_limit_exceeded


class ErrorResponse(BaseModel):
    """The body of every error answer (`tideflow.serve.errors`)."""

    error: ErrorObject


class TokenizeCompletionRequest(_Body):
    """`POST /tokenize` of a completion prompt (vLLM's shape)."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(_Body):
    """`POST /tokenize` of a conversation, after the chat template (vLLM's shape)."""

    model: str | None = None
    messages: list[ChatMessage]
    tools: list[ChatTool] | None = None  # given to the chat template, as in a chat request
    add_generation_prompt: bool = True
    add_special_tokens: bool = False  # the template already places them
    return_token_strs: bool = False


class DetokenizeRequest(_Body):
    """`POST /detokenize`: token ids back to text."""

    model: str | None = None
    tokens: list[int]


class EmbeddingRequest(_Body):
    """`POST /v1/embeddings` (OpenAI's shape; `pooling` is tideflow's extension)."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str = "float"  # "float" | "base64" (little-endian float32, as OpenAI's)
    dimensions: int | None = None  # not supported: the model's hidden size only
    user: str | None = None  # accepted and ignored
    pooling: str = "last"  # "last" | "mean" over the prompt's final hidden states
