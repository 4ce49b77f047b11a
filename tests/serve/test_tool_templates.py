"""Tools and tool-use history through the chat template: a chat request with `tools` and a
history of assistant `tool_calls` and `tool` replies renders exactly as transformers renders
the same conversation (the calls' arguments as objects, as HF templates need them), through
the server's request path, the prompt front door and /tokenize alike."""

from __future__ import annotations

import copy
import json

import pytest

from tideflow.runtime.engine.prompt_processor import PromptProcessor
from tideflow.serve.model_info import ModelInfo
from tideflow.serve.prepare import prepare_chat
from tideflow.serve.protocol import ChatCompletionRequest
from tideflow.serve.tokenize_routes import tokenize

from .tool_chat import HISTORY, QWEN25_TOOLS_TEMPLATE, TOOLS


@pytest.fixture(scope="module")
def info(tiny_model_dir):
    return ModelInfo.load("llama", tiny_model_dir("llama"), chat_template=QWEN25_TOOLS_TEMPLATE)


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir("llama"))


def as_transformers_takes_it(messages: list[dict]) -> list[dict]:
    """The conversation as transformers' docs pass it: each call's arguments an object."""
    out = copy.deepcopy(messages)
    for m in out:
        for call in m.get("tool_calls") or ():
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return out


def prepared(info, **fields):
    body = {"messages": HISTORY, "max_tokens": 4, **fields}
    return prepare_chat(ChatCompletionRequest.model_validate(body, strict=True), info, "hermes")


def test_tools_and_tool_history_render_as_transformers_renders_them(info, hf_tokenizer):
    prompt = prepared(info, tools=TOOLS).prompts[0]
    expected = hf_tokenizer.apply_chat_template(as_transformers_takes_it(HISTORY), tools=TOOLS,
                                                chat_template=QWEN25_TOOLS_TEMPLATE, add_generation_prompt=True,
                                                tokenize=False)
    assert prompt["prompt"] == expected
    assert prompt["prompt_token_ids"] == hf_tokenizer.encode(expected, add_special_tokens=False)
    text = prompt["prompt"]
    assert json.dumps(TOOLS[0], ensure_ascii=False) in text  # the tools, in the system prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}\n</tool_call>' in text
    assert '<tool_response>\n{"temperature": 21}\n</tool_response>\n<tool_response>\n{"temperature": 25}' in text


def test_tool_choice_none_still_shows_the_tools_and_no_tools_shows_none(info):
    assert prepared(info, tools=TOOLS, tool_choice="none").prompts[0]["prompt"] == \
        prepared(info, tools=TOOLS).prompts[0]["prompt"]
    plain = prepared(info).prompts[0]["prompt"]
    assert "<tools>" not in plain and "<tool_call>" in plain  # the history still renders its calls


def test_the_prompt_front_door_and_tokenize_render_the_same(info, tiny_model_dir):
    prep = prepared(info, tools=TOOLS)
    processor = PromptProcessor.load(tiny_model_dir("llama"), chat_template=QWEN25_TOOLS_TEMPLATE)
    front = processor.process({"messages": prep.prompts[0]["messages"], "tools": TOOLS})
    assert front.token_ids == prep.prompts[0]["prompt_token_ids"]
    counted = tokenize({"messages": HISTORY, "tools": TOOLS}, info)
    assert counted["tokens"] == prep.prompts[0]["prompt_token_ids"]
    assert tokenize({"messages": HISTORY}, info)["count"] < counted["count"]
