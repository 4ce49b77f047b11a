"""Tool calling end to end through the server with the `openai` client, on a Ray-free
stand-in whose graph answers every request with a scripted reply streamed token by token (a
random tiny model cannot be made to call a tool; the grammar that makes it for `required` and
named choices is the engine's, tested in test_tool_calls_client.py). What runs for real: the
request's validation, the chat template with the tools, the constraint handed to the graph,
the parsers, and the whole and streamed responses, which must agree."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tideflow.runtime.dataflow.collector import CompletionDelta, OutputDelta
from tideflow.serve.config import ServeConfig
from tideflow.serve.model_info import ModelInfo
from tideflow.serve.server import OpenAIServer, build_asgi_app

from .conftest import run
from .tool_chat import QWEN25_TOOLS_TEMPLATE, TOOLS, WEATHER

USER = [{"role": "user", "content": "What's the weather in Paris and Rome?"}]
PARIS = '{"city": "Paris"}'
ROME = '{"city": "Rome", "unit": "celsius"}'
HERMES_REPLY = (f'Let me check both.\n<tool_call>\n{{"name": "get_weather", "arguments": {PARIS}}}\n</tool_call>\n'
                f'<tool_call>\n{{"name": "get_weather", "arguments": {ROME}}}\n</tool_call>')


class ScriptedHandle:
    """What `OpenAIServer` needs of a `GraphHandle`: each request gets `reply`, one token per
    delta as the collector streams it, ending with `finish`; what was asked is kept."""

    def __init__(self, info: ModelInfo):
        self.info = info
        self.reply = ""
        self.finish = "stop"
        self.asked: list[tuple[dict, object]] = []  # (graph prompt, SamplingParams)

    async def submit_deltas(self, prompt: dict, params):
        self.asked.append((prompt, params))
        ids = self.info.tokenizer.encode(self.reply, add_special_tokens=False)
        sent = ""
        for k in range(len(ids)):
            text = self.info.decode(ids[:k + 1])
            last = k == len(ids) - 1
            piece, sent = (text[len(sent):], text) if not text.endswith("\ufffd") or last else ("", sent)
            completions = [CompletionDelta(i, [ids[k]], piece, None, None, self.finish if last else None, None)
                           for i in range(params.n)]
            yield OutputDelta(f"r{len(self.asked)}", last, completions, prompt["prompt_token_ids"] if k == 0 else None)


def served(tiny_model_dir, parser: str | None):
    info = ModelInfo.load("llama", tiny_model_dir("llama"), chat_template=QWEN25_TOOLS_TEMPLATE)
    handle = ScriptedHandle(info)
    return handle, build_asgi_app(OpenAIServer(ServeConfig(tool_call_parser=parser), handle, info))


@pytest.fixture(scope="module")
def hermes(tiny_model_dir):
    return served(tiny_model_dir, "hermes")


def chat(app, reply_to: ScriptedHandle, reply: str, finish: str = "stop", **fields):
    """(the whole response, the chunks of the same request streamed) from the openai client."""
    import httpx2
    from openai import AsyncOpenAI

    async def go():
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test") as http:
            client = AsyncOpenAI(base_url="http://test/v1", api_key="none", http_client=http, max_retries=0)
            whole = await client.chat.completions.create(model="llama", messages=USER, **fields)
            stream = await client.chat.completions.create(model="llama", messages=USER, stream=True, **fields)
            return whole, [chunk async for chunk in stream]

    reply_to.reply, reply_to.finish = reply, finish
    return run(go())


def reassembled(chunks) -> dict[int, dict]:
    """choice index -> {"content", "calls": [{"id", "name", "arguments"}], "finish"} from stream chunks."""
    out: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            got = out.setdefault(choice.index, {"content": "", "calls": [], "finish": None})
            got["content"] += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                if call.id is not None:  # a call's first delta: its id, type, name, empty arguments
                    assert call.index == len(got["calls"]) and call.type == "function"
                    assert call.function.arguments == ""
                    got["calls"].append({"id": call.id, "name": call.function.name, "arguments": ""})
                else:
                    assert call.function.name is None and call.type is None
                    got["calls"][call.index]["arguments"] += call.function.arguments
            if choice.finish_reason is not None:
                assert got["finish"] is None
                got["finish"] = choice.finish_reason
    return out


def as_dicts(message) -> list[dict]:
    return [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or ()]


def without_ids(calls: list[dict]) -> list[dict]:
    return [{k: v for k, v in c.items() if k != "id"} for c in calls]


def test_auto_finds_the_calls_and_the_stream_adds_up_to_the_same(hermes):
    handle, app = hermes
    whole, chunks = chat(app, handle, HERMES_REPLY, tools=TOOLS)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check both."
    calls = as_dicts(choice.message)
    assert without_ids(calls) == [{"name": "get_weather", "arguments": PARIS}, {"name": "get_weather", "arguments": ROME}]
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]
    for c in calls:
        jsonschema.validate(json.loads(c["arguments"]), WEATHER["function"]["parameters"])
    streamed = reassembled(chunks)[0]
    assert streamed["content"] == choice.message.content and streamed["finish"] == "tool_calls"
    assert without_ids(streamed["calls"]) == without_ids(calls)
    # argument fragments really streamed, after the content
    fragments = [c for ch in chunks for c in (ch.choices[0].delta.tool_calls or ()) if ch.choices and c.id is None]
    assert len(fragments) > 4
    first_call = next(k for k, ch in enumerate(chunks) if ch.choices and ch.choices[0].delta.tool_calls)
    assert all(not (ch.choices and ch.choices[0].delta.content) for ch in chunks[first_call:])
    # what the graph was asked: no constraint, the tools in the prompt
    prompt, params = handle.asked[-1]
    assert params.structured_outputs is None and '"name": "get_weather"' in prompt["prompt"]


def test_auto_with_a_plain_answer_is_content(hermes):
    handle, app = hermes
    whole, chunks = chat(app, handle, "It is sunny in Paris.", tools=TOOLS)
    assert whole.choices[0].message.tool_calls is None and whole.choices[0].message.content == "It is sunny in Paris."
    assert whole.choices[0].finish_reason == "stop"
    assert reassembled(chunks)[0] == {"content": "It is sunny in Paris.", "calls": [], "finish": "stop"}


def test_a_cut_off_call_stays_text_in_a_whole_response(hermes):
    handle, app = hermes
    reply = '<tool_call>\n{"name": "get_weather", "arguments": {"ci'
    whole, _ = chat(app, handle, reply, finish="length", tools=TOOLS)
    assert whole.choices[0].message.content == reply and whole.choices[0].message.tool_calls is None
    assert whole.choices[0].finish_reason == "length"


def test_parallel_tool_calls_false_keeps_the_first_call(hermes):
    handle, app = hermes
    whole, chunks = chat(app, handle, HERMES_REPLY, tools=TOOLS, parallel_tool_calls=False)
    assert without_ids(as_dicts(whole.choices[0].message)) == [{"name": "get_weather", "arguments": PARIS}]
    assert without_ids(reassembled(chunks)[0]["calls"]) == [{"name": "get_weather", "arguments": PARIS}]


def test_tool_choice_none_leaves_the_text_alone(hermes):
    handle, app = hermes
    whole, chunks = chat(app, handle, HERMES_REPLY, tools=TOOLS, tool_choice="none")
    assert whole.choices[0].message.content == HERMES_REPLY and whole.choices[0].message.tool_calls is None
    assert reassembled(chunks)[0] == {"content": HERMES_REPLY, "calls": [], "finish": "stop"}


def test_required_is_constrained_to_an_array_of_calls_and_read_back(hermes):
    handle, app = hermes
    reply = f'[{{"name": "get_weather", "parameters": {PARIS}}}, {{"name": "local_time", "parameters": {{"city": "Rome"}}}}]'
    whole, chunks = chat(app, handle, reply, tools=TOOLS, tool_choice="required", n=2)
    for choice in whole.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert without_ids(as_dicts(choice.message)) == [{"name": "get_weather", "arguments": PARIS},
                                                         {"name": "local_time", "arguments": '{"city": "Rome"}'}]
    streamed = reassembled(chunks)
    assert sorted(streamed) == [0, 1]
    for i in (0, 1):
        assert without_ids(streamed[i]["calls"]) == without_ids(as_dicts(whole.choices[i].message))
        assert streamed[i]["finish"] == "tool_calls" and streamed[i]["content"] == ""
    _, params = handle.asked[-1]
    schema = params.structured_outputs.json
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    jsonschema.validate(json.loads(reply), schema)


def test_a_named_function_gets_the_whole_output_as_arguments(hermes):
    handle, app = hermes
    choice = {"type": "function", "function": {"name": "get_weather"}}
    whole, chunks = chat(app, handle, ROME, tools=TOOLS, tool_choice=choice)
    message = whole.choices[0].message
    assert without_ids(as_dicts(message)) == [{"name": "get_weather", "arguments": ROME}]
    assert message.content is None and whole.choices[0].finish_reason == "stop"  # as OpenAI's forced calls
    streamed = reassembled(chunks)[0]
    assert without_ids(streamed["calls"]) == without_ids(as_dicts(message)) and streamed["finish"] == "stop"
    _, params = handle.asked[-1]
    assert params.structured_outputs.json == WEATHER["function"]["parameters"]


def test_a_history_of_tool_use_reaches_the_graph_rendered(hermes):
    handle, app = hermes
    import httpx2
    from openai import AsyncOpenAI

    history = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "21 degrees"}]

    async def go():
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test") as http:
            client = AsyncOpenAI(base_url="http://test/v1", api_key="none", http_client=http, max_retries=0)
            return await client.chat.completions.create(model="llama", messages=history, tools=TOOLS)

    handle.reply = "It is 21 degrees."
    assert run(go()).choices[0].message.content == "It is 21 degrees."
    prompt, _ = handle.asked[-1]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt["prompt"]
    assert "<tool_response>\n21 degrees\n</tool_response>" in prompt["prompt"]


def test_llama3_json_server(tiny_model_dir):
    handle, app = served(tiny_model_dir, "llama3_json")
    reply = f'<|python_tag|>{{"name": "get_weather", "parameters": {PARIS}}}; {{"name": "local_time", "parameters": {{"city": "Rome"}}}}'
    whole, chunks = chat(app, handle, reply, tools=TOOLS, tool_choice="auto")
    calls = without_ids(as_dicts(whole.choices[0].message))
    assert calls == [{"name": "get_weather", "arguments": PARIS}, {"name": "local_time", "arguments": '{"city": "Rome"}'}]
    assert whole.choices[0].message.content is None and whole.choices[0].finish_reason == "tool_calls"
    assert without_ids(reassembled(chunks)[0]["calls"]) == calls


def test_auto_without_a_parser_is_refused(tiny_model_dir):
    import openai

    handle, app = served(tiny_model_dir, None)
    with pytest.raises(openai.BadRequestError) as exc:
        chat(app, handle, "x", tools=TOOLS)
    assert exc.value.body["param"] == "tool_choice" and "--tool-call-parser" in exc.value.body["message"]
    whole, _ = chat(app, handle, ROME, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert whole.choices[0].message.tool_calls[0].function.arguments == ROME  # forced choices need no parser
