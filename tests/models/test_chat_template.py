"""Chat templates rendered without transformers (`tideflow.models.chat_template` through
`TextTokenizer.apply_chat_template`) equal transformers' `apply_chat_template`, text and token
for token: the tokenizers' own templates (tiny models, demo, SmolLM2) and a Llama-3-style and a
Mistral-style template with tools and a system prompt. A template that fails is a ValueError
carrying its message."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import pytest

from tideflow.models.chat_template import ChatTemplateError
from tideflow.models.text_tokenizer import TextTokenizer

TEMPLATES = Path(__file__).resolve().parent / "chat_templates"
LLAMA3 = (TEMPLATES / "llama3_tools.jinja").read_text()
MISTRAL = (TEMPLATES / "mistral_tools.jinja").read_text()
DEMO_MODEL = str(Path(__file__).resolve().parents[2] / "tideflow" / "demo" / "demo_model")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "local_time", "description": "The time in a city, «now».",
                                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]
CALL = {"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}

SIMPLE = [{"role": "user", "content": "Name three colours."}]
WITH_SYSTEM = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi <s> there"},
    {"role": "assistant", "content": "Hello! 👋"},
    {"role": "user", "content": "Again, in 中文?"},
]
TOOL_CHAT = [
    {"role": "system", "content": "You answer weather questions. Use the tools."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},  # content None: dropped, as transformers does
    {"role": "tool", "tool_call_id": "call12345", "content": '{"temperature": 21, "sky": "sunny"}'},
    {"role": "assistant", "content": "  It is 21 °C and sunny in Paris.  "},
    {"role": "user", "content": "And what time is it there?"},
]


@pytest.fixture(scope="module", params=["llama", "llava", "demo", "smollm2"])
def pair(request, tiny_model_dir):
    """(transformers' tokenizer, TextTokenizer) of one directory."""
    from transformers import AutoTokenizer

    if request.param == "demo":
        path = DEMO_MODEL
    elif request.param == "smollm2":
        path = request.getfixturevalue("smollm2_dir")
    else:
        path = tiny_model_dir(request.param)
    return AutoTokenizer.from_pretrained(path), TextTokenizer.from_dir(path)


def assert_same(hf, ours, conversation, **kwargs):
    """Same text and same ids (tokenize=True) from both; returns the text."""
    text = ours.apply_chat_template(conversation, tokenize=False, **kwargs)
    assert text == hf.apply_chat_template(conversation, tokenize=False, **kwargs)
    ids = ours.apply_chat_template(conversation, **kwargs)
    assert ids == hf.apply_chat_template(conversation, tokenize=True, return_dict=False, **kwargs)
    assert ids == ours.encode(text, add_special_tokens=False)
    return text


@pytest.mark.parametrize("conversation", [SIMPLE, WITH_SYSTEM], ids=["simple", "system"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_the_tokenizers_own_template_renders_as_transformers_does(pair, conversation, add_generation_prompt):
    hf, ours = pair
    assert_same(hf, ours, conversation, add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("template", [LLAMA3, MISTRAL], ids=["llama3", "mistral"])
@pytest.mark.parametrize("tools", [TOOLS, None], ids=["tools", "no_tools"])
def test_llama3_and_mistral_style_templates_with_tools_and_a_system_prompt(pair, template, tools):
    hf, ours = pair
    for generation in (True, False):
        text = assert_same(hf, ours, TOOL_CHAT, chat_template=template, tools=tools, add_generation_prompt=generation,
                           date_string="26 Jul 2024")
        assert text.startswith(ours.bos_token)
        assert ("The current weather in a city." in text.split("What's the weather")[-1]) == (tools is not None)
        assert "You answer weather questions." in text and "21 °C" in text
    assert_same(hf, ours, WITH_SYSTEM, chat_template=template, tools=tools, add_generation_prompt=True,
                date_string="1 Jan 2025")


def test_template_variables_special_tokens_and_extra_keywords(pair):
    hf, ours = pair
    template = ("{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token | default('none') }}|{{ custom }}|"
                "{% for d in documents %}{{ d.title }}: {{ d.text }};{% endfor %}"
                "{% set d = dict(a=1, b=[1, 2]) %}{{ d | tojson }}{{ dict.fromkeys(['x']) | tojson }}"
                "{% for m in messages %}{{ m.role }}={{ m.content }}{% if m.reasoning_content is defined %}"
                "[{{ m.reasoning_content }}/{{ m.thinking }}]{% endif %}{% endfor %}")
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning": "because"}]
    documents = [{"title": "Doc <1>", "text": "café & crème"}, {"title": "B", "text": "x"}]
    assert_same(hf, ours, chat, chat_template=template, documents=documents, custom="«kw»")


@dataclasses.dataclass
class Message:
    role: str
    content: str
    name: str | None = None


def test_message_objects_and_none_fields_are_plain_data(pair):
    hf, ours = pair
    template = "{% for m in messages %}{{ m.role }}:{{ m.content }}:{{ m.name is defined }};{% endfor %}"
    chat = [Message("user", "hi"), Message("assistant", "yo", name="bot")]
    assert_same(hf, ours, chat, chat_template=template)


def test_strftime_now_renders_todays_date(pair):
    _, ours = pair
    before = datetime.now().strftime("%d %b %Y")
    text = ours.apply_chat_template(SIMPLE, chat_template=LLAMA3, tokenize=False)
    assert f"Today Date: {before}" in text or f"Today Date: {datetime.now().strftime('%d %b %Y')}" in text


def test_raise_exception_is_a_clear_value_error_as_transformers_raises_it(pair):
    import jinja2

    hf, ours = pair
    cases = [
        (MISTRAL, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "roles must alternate"),
        (MISTRAL, [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [{**CALL, "id": "short"}]}],
         "length 9"),
        (LLAMA3, [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [CALL, CALL]}],
         "single tool-calls"),
        (LLAMA3, [{"role": "narrator", "content": "a"}], "Unknown role: narrator"),
    ]
    for template, chat, message in cases:
        with pytest.raises(jinja2.TemplateError, match=message):
            hf.apply_chat_template(chat, chat_template=template, tokenize=False)
        with pytest.raises(ChatTemplateError, match=f"chat template: .*{message}") as info:
            ours.apply_chat_template(chat, chat_template=template, tokenize=False)
        assert isinstance(info.value, ValueError)


def test_other_template_failures_are_value_errors_too(tiny_model_dir):
    ours = TextTokenizer.from_dir(tiny_model_dir("llama"))
    bad = {
        "{% for m in messages %}": "chat template: .*(end of template|endfor)",  # a syntax error
        "{{ messages[0].content | length + none }}": "chat template: ",  # a Python error inside the template
        "{% set ns = namespace(_secret=1) %}": "underscore",  # the sandbox refuses it
        "{{ ''.__class__.__mro__[1].__subclasses__() }}": "chat template: ",
    }
    for template, match in bad.items():
        with pytest.raises(ValueError, match=match):
            ours.apply_chat_template(SIMPLE, chat_template=template, tokenize=False)
    with pytest.raises(ValueError, match="empty conversation"):
        ours.apply_chat_template([], tokenize=False)
    with pytest.raises(ValueError, match="JSON schema"):
        ours.apply_chat_template(SIMPLE, tools=[print], tokenize=False)


def test_the_prompt_processor_turns_a_transformers_template_error_into_a_value_error(tiny_model_dir):
    from transformers import AutoTokenizer

    from tideflow.runtime.engine.prompt_processor import PromptProcessor

    model = tiny_model_dir("llama")
    for tokenizer in (AutoTokenizer.from_pretrained(model), TextTokenizer.from_dir(model)):  # LLM's, and the stages'
        prompts = PromptProcessor(tokenizer, 512, 1024, chat_template=MISTRAL)
        with pytest.raises(ValueError, match="roles must alternate"):
            prompts.encode_chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
