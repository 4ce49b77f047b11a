"""Chat templates rendered with jinja2 as transformers renders them, without transformers.

A chat template is Jinja text shipped with a tokenizer. transformers' `apply_chat_template`
renders it in a sandbox with a few conventions that templates on the Hub rely on, and this
module keeps them, so a conversation renders to the same text (and so the same token ids):

- an immutable sandboxed environment with `trim_blocks` and `lstrip_blocks`, the
  `loopcontrols` extension (`break`, `continue`) and a `{% generation %}` block (it marks the
  assistant's text for training masks; here it renders its body unchanged);
- `tojson` that does not escape HTML and takes `indent`, `separators`, `sort_keys`;
- the globals `raise_exception(message)`, `strftime_now(format)`, a `dict` constructor and a
  `namespace` that refuses underscore-prefixed names;
- the variables `messages`, `tools`, `documents`, `add_generation_prompt`, the tokenizer's
  named special tokens (`bos_token`, `eos_token`, ...) and any extra keyword variables;
- inputs rebuilt from plain JSON types first (message keys whose value is None dropped, other
  objects replaced by a "<TypeName>" placeholder), and a message's reasoning offered under
  `reasoning_content` and `thinking` whichever name it came under.

Every failure of a template (a syntax error, `raise_exception`, an undefined call, a sandbox
refusal, a Python error such as `len(None)`) is a `ChatTemplateError`, a ValueError carrying
the template's message.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

# The keys a message's reasoning comes under; the first is the one templates read.
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """A chat template failed to render (its own `raise_exception` included)."""


def pick_template(templates: str | dict[str, str] | None, chat_template: str | None = None,
                  tools: list | None = None) -> str:
    """The template text to render: `chat_template` when given (or, with named templates, the
    template of that name), else the tokenizer's own; of named templates, "tool_use" when tools
    are given and it exists, else "default". ValueError when there is none to use."""
    if isinstance(templates, dict):
        if chat_template is not None:
            return templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        raise ValueError(
            f"the tokenizer has several chat templates and none is 'default': pass chat_template, "
            f"one of {sorted(templates)}"
        )
    if chat_template is not None:
        return chat_template
    if templates is None:
        raise ValueError("the tokenizer has no chat template and none was given (chat_template)")
    return templates


def render(template: str, messages: list, *, tools: list | None = None, documents: list | None = None,
           add_generation_prompt: bool = False, variables: Mapping[str, Any] | None = None) -> str:
    """One conversation rendered through `template`. `variables`: the special tokens and any
    other names the template reads (`bos_token`, `date_string`, `enable_thinking`, ...)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("cannot apply a chat template to an empty conversation: give at least one message")
    chat = _plain(_messages_as_dicts(messages))
    chat = [_with_reasoning_aliases(m) for m in chat]
    context = _plain(dict(variables or {}))
    context.update(
        messages=chat,
        tools=_plain(_tool_schemas(tools)),
        documents=_plain(_checked_documents(documents)),
        add_generation_prompt=add_generation_prompt,
    )
    compiled = compile_template(template)
    try:
        return compiled.render(**context)
    except Exception as exc:  # noqa: BLE001 (whatever a template raises, it failed: len(None), a bad index, ...)
        raise ChatTemplateError(f"chat template: {exc}") from exc


@functools.lru_cache(maxsize=32)
def compile_template(template: str):
    """The compiled template (cached: a stage renders with one or two templates all its life).
    A syntax error is a ChatTemplateError."""
    import jinja2

    try:
        return _environment().from_string(template)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template: {exc}") from exc


@functools.cache
def _environment():
    """The sandboxed environment chat templates render in (built once, on first use)."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`: renders its body as it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        @staticmethod
        def _body(caller):
            return caller()

    class SafeNamespace(jinja2.utils.Namespace):
        """`namespace(...)` that will not hold a name starting with "_" (CPython internals)."""

        def __init__(*args, **kwargs):  # no named `self`: `namespace(self=1)` must still work
            attrs = dict(*args[1:], **kwargs)
            for name in attrs:
                _public_name(name)
            jinja2.utils.Namespace.__init__(args[0], attrs)

        def __setitem__(self, name, value):
            _public_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    def _public_name(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a namespace cannot hold the underscore-prefixed name {name!r}")

    class DictMaker:
        """`dict(...)` and `dict.fromkeys(...)` in a template, and nothing else of the type."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=DictMaker(),
                       namespace=SafeNamespace)
    return env


# -- the inputs, as plain data -----------------------------------------------------------------
def _messages_as_dicts(messages) -> list[dict]:
    """Each message as a dict without the keys whose value is None (APIs send `content: null`
    beside tool calls; templates handle a missing key, not a None one)."""
    out = []
    for message in messages:
        message = _as_data(message)
        if not isinstance(message, dict):
            raise TypeError(f"chat messages must be dicts, got {message!r}")
        out.append({k: v for k, v in message.items() if v is not None})
    return out


def _as_data(value: Any) -> Any:
    """Dataclasses and pydantic models (an OpenAI SDK message) as dicts, recursively."""
    if isinstance(value, Mapping):
        return {k: _as_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_as_data(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _as_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _as_data(value.model_dump())
    return value


def _plain(value: Any) -> Any:
    """`value` rebuilt from JSON types: what a template sees has no methods beyond theirs.
    Subclasses of str/int/float become the base type; other objects (images, arrays) a
    "<TypeName>" placeholder, since templates only test whether such keys are present."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    item = getattr(value, "item", None)
    if type(value).__module__ == "numpy" and callable(item):  # a numpy scalar: its Python value
        return _plain(item())
    if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or callable(getattr(value, "model_dump", None)):
        return _plain(_as_data(value))
    return f"<{type(value).__name__}>"


def _with_reasoning_aliases(message: dict) -> dict:
    """A message whose reasoning came under any of `REASONING_KEYS` also has it under
    `reasoning_content` (what templates read) and `thinking` (what gpt-oss templates read)."""
    reasoning = next((message[k] for k in REASONING_KEYS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _tool_schemas(tools) -> list | None:
    if tools is None:
        return None
    for tool in tools:
        if not isinstance(tool, dict):
            raise ValueError(f"tools: each tool must be a JSON schema (a dict), got {type(tool).__name__}")
    return list(tools)


def _checked_documents(documents) -> list | None:
    if documents is None:
        return None
    for document in documents:
        if not isinstance(document, dict):
            raise TypeError("documents: each document must be a dict (with 'title' and 'text' keys)")
    return list(documents)
