"""docs/reliability.md's bad-input matrix over raw HTTP: each mistake is a 400 (404 for an unknown
model) with an OpenAI error object naming the parameter (or none, for a body that is wrong as a
whole); none reaches the graph, so the next valid greedy request gives the same output as
before, and the replica stays healthy."""

from __future__ import annotations

import json

import aiohttp
import pytest

from .conftest import run

GOOD = {"prompt": "def fibonacci(n):", "max_tokens": 8, "temperature": 0}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}
LONG_TEXT = "x = 1\n" * 2000  # far past the tiny model's 1024 tokens
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
DEEP = '{"prompt": "hi", "max_tokens": 2, "extra": ' + "[" * 5000 + "]" * 5000 + "}"  # was a 500 (RecursionError)


def _nested_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):  # two levels of the body each ("properties", then the property)
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


HUGE = "x" * 10_000_000  # 10 MB: was tokenized for 16 s before its context-length 400

# (case, path, body (dict -> JSON; str/bytes -> sent raw), content type, status, error param)
CASES = [
    ("context length", "completions", {**GOOD, "max_tokens": 1000, "prompt": "def " * 100}, None, 400, "max_tokens"),
    ("prompt alone over the context", "completions", {**GOOD, "prompt": LONG_TEXT}, None, 400, "prompt"),
    ("chat over the context", "chat/completions", {**CHAT, "max_tokens": 1020}, None, 400, "max_tokens"),
    ("max_tokens 0", "completions", {**GOOD, "max_tokens": 0}, None, 400, "max_tokens"),
    ("max_tokens negative", "completions", {**GOOD, "max_tokens": -5}, None, 400, "max_tokens"),
    ("max_completion_tokens 0", "chat/completions", {**CHAT, "max_completion_tokens": 0}, None, 400,
     "max_completion_tokens"),
    ("temperature < 0", "completions", {**GOOD, "temperature": -0.5}, None, 400, "temperature"),
    ("top_p 0", "completions", {**GOOD, "top_p": 0}, None, 400, "top_p"),
    ("top_p > 1", "chat/completions", {**CHAT, "top_p": 1.5}, None, 400, "top_p"),
    ("n 0", "completions", {**GOOD, "n": 0}, None, 400, "n"),
    ("token id past the vocabulary", "completions", {**GOOD, "prompt": [1, 2, 512]}, None, 400, "prompt"),
    ("negative token id", "completions", {**GOOD, "prompt": [[5, -1]]}, None, 400, "prompt"),
    ("empty prompt", "completions", {**GOOD, "prompt": ""}, None, 400, "prompt"),
    ("empty prompt list", "completions", {**GOOD, "prompt": []}, None, 400, "prompt"),
    ("empty token list", "completions", {**GOOD, "prompt": [[]]}, None, 400, "prompt"),
    ("empty messages", "chat/completions", {**CHAT, "messages": []}, None, 400, "messages"),
    ("missing prompt", "completions", {"max_tokens": 4}, None, 400, "prompt"),
    ("malformed JSON", "completions", '{"prompt": "hi", ', None, 400, None),
    ("NaN", "completions", '{"prompt": "hi", "temperature": NaN}', None, 400, None),
    ("body is a list", "completions", "[1, 2]", None, 400, None),
    ("body is a string", "completions", '"hello"', None, 400, None),
    ("body is a number", "chat/completions", "42", None, 400, None),
    ("body is null", "completions", "null", None, 400, None),
    ("wrong content type", "completions", json.dumps(GOOD), "text/plain", 400, None),
    ("no content type", "completions", json.dumps(GOOD).encode(), "", 400, None),
    ("max_tokens a string", "completions", {**GOOD, "max_tokens": "8"}, None, 400, "max_tokens"),
    ("n a float", "completions", {**GOOD, "n": 1.5}, None, 400, "n"),
    ("temperature a string", "chat/completions", {**CHAT, "temperature": "hot"}, None, 400, "temperature"),
    ("stream a number", "completions", {**GOOD, "stream": 1}, None, 400, "stream"),
    ("stop a number", "completions", {**GOOD, "stop": 7}, None, 400, "stop"),
    ("stop an empty string", "completions", {**GOOD, "stop": [""]}, None, 400, "stop"),
    ("prompt a dict", "completions", {**GOOD, "prompt": {"text": "hi"}}, None, 400, "prompt"),
    ("messages a string", "chat/completions", {**CHAT, "messages": "hi"}, None, 400, "messages"),
    ("message without role", "chat/completions", {**CHAT, "messages": [{"content": "hi"}]}, None, 400, "messages"),
    ("image content part", "chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None,
     400, "messages"),
    ("logprobs a bool", "completions", {**GOOD, "logprobs": True}, None, 400, "logprobs"),
    ("logprobs too many", "completions", {**GOOD, "logprobs": 50}, None, 400, "logprobs"),
    ("top_logprobs without logprobs", "chat/completions", {**CHAT, "top_logprobs": 2}, None, 400, "top_logprobs"),
    ("seed too large", "completions", {**GOOD, "seed": 2**70}, None, 400, "seed"),
    ("presence_penalty out of range", "completions", {**GOOD, "presence_penalty": 3}, None, 400, "presence_penalty"),
    ("repetition_penalty 0", "completions", {**GOOD, "repetition_penalty": 0}, None, 400, "repetition_penalty"),
    ("stream_options without stream", "completions", {**GOOD, "stream_options": {"include_usage": True}}, None, 400,
     "stream_options"),
    ("logit_bias key not a token id", "completions", {**GOOD, "logit_bias": {"abc": 1}}, None, 400, "logit_bias"),
    ("logit_bias past the vocabulary", "completions", {**GOOD, "logit_bias": {"99999": 1}}, None, 400, "logit_bias"),
    ("logit_bias value a string", "completions", {**GOOD, "logit_bias": {"5": "up"}}, None, 400, "logit_bias"),
    ("logit_bias a list", "chat/completions", {**CHAT, "logit_bias": [5]}, None, 400, "logit_bias"),
    ("allowed_token_ids past the vocabulary", "completions", {**GOOD, "allowed_token_ids": [5, 512]}, None, 400,
     "allowed_token_ids"),
    ("allowed_token_ids empty", "completions", {**GOOD, "allowed_token_ids": []}, None, 400, "allowed_token_ids"),
    ("allowed_token_ids a string", "chat/completions", {**CHAT, "allowed_token_ids": "5"}, None, 400,
     "allowed_token_ids"),
    ("bad_words a string", "completions", {**GOOD, "bad_words": "no"}, None, 400, "bad_words"),
    ("bad_words empty word", "completions", {**GOOD, "bad_words": [" "]}, None, 400, "bad_words"),
    ("bad_words numbers", "chat/completions", {**CHAT, "bad_words": [3]}, None, 400, "bad_words"),
    ("prompt_logprobs negative", "completions", {**GOOD, "prompt_logprobs": -1}, None, 400, "prompt_logprobs"),
    ("prompt_logprobs too many", "completions", {**GOOD, "prompt_logprobs": 50}, None, 400, "prompt_logprobs"),
    ("prompt_logprobs a string", "completions", {**GOOD, "prompt_logprobs": "1"}, None, 400, "prompt_logprobs"),
    ("echo a string", "completions", {**GOOD, "echo": "yes"}, None, 400, "echo"),
    ("max_tokens 0 with echo and n too many", "completions", {**GOOD, "echo": True, "max_tokens": 0, "n": 999}, None,
     400, "n"),
    ("stop_token_ids past the vocabulary", "completions", {**GOOD, "stop_token_ids": [512]}, None, 400,
     "stop_token_ids"),
    ("skip_special_tokens a string", "completions", {**GOOD, "skip_special_tokens": "no"}, None, 400,
     "skip_special_tokens"),
    ("best_of below n", "completions", {**GOOD, "n": 2, "best_of": 1}, None, 400, "best_of"),
    ("best_of streamed", "completions", {**GOOD, "best_of": 2, "stream": True}, None, 400, "best_of"),
    ("best_of a float", "completions", {**GOOD, "best_of": 2.5}, None, 400, "best_of"),
    ("embeddings input empty", "embeddings", {"input": ""}, None, 400, "input"),
    ("embeddings input past the vocabulary", "embeddings", {"input": [5, 512]}, None, 400, "input"),
    ("embeddings encoding_format", "embeddings", {"input": "hi", "encoding_format": "hex"}, None, 400,
     "encoding_format"),
    ("embeddings pooling a number", "embeddings", {"input": "hi", "pooling": 1}, None, 400, "pooling"),
    ("response_format type unknown", "chat/completions", {**CHAT, "response_format": {"type": "xml"}}, None, 400,
     "response_format"),
    ("response_format a string", "chat/completions", {**CHAT, "response_format": "json"}, None, 400, "response_format"),
    ("response_format json_schema without schema", "chat/completions",
     {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, None, 400, "response_format"),
    ("response_format schema does not compile", "chat/completions",
     {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nosuch"}}}},
     None, 400, "response_format"),
    ("response_format strict a string", "chat/completions",
     {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}}},
     None, 400, "response_format"),
    ("response_format schema a list (completions)", "completions",
     {**GOOD, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}}, None, 400,
     "response_format"),
    ("structured_outputs regex does not compile", "completions", {**GOOD, "structured_outputs": {"regex": "a(b"}}, None,
     400, "structured_outputs"),
    ("structured_outputs grammar does not compile", "chat/completions",
     {**CHAT, "structured_outputs": {"grammar": "start: foo"}}, None, 400, "structured_outputs"),
    ("structured_outputs json not JSON", "completions", {**GOOD, "structured_outputs": {"json": "{nope"}}, None, 400,
     "structured_outputs"),
    ("structured_outputs choice a string", "completions", {**GOOD, "structured_outputs": {"choice": "yes"}}, None, 400,
     "structured_outputs"),
    ("structured_outputs choice empty", "completions", {**GOOD, "structured_outputs": {"choice": []}}, None, 400,
     "structured_outputs"),
    ("structured_outputs empty", "completions", {**GOOD, "structured_outputs": {}}, None, 400, "structured_outputs"),
    ("structured_outputs two kinds", "chat/completions",
     {**CHAT, "structured_outputs": {"regex": "a", "choice": ["a"]}}, None, 400, "structured_outputs"),
    ("structured_outputs a list", "completions", {**GOOD, "structured_outputs": ["a"]}, None, 400, "structured_outputs"),
    ("response_format and structured_outputs", "chat/completions",
     {**CHAT, "response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, None, 400,
     "structured_outputs"),
    ("tools a dict", "chat/completions", {**CHAT, "tools": TOOL}, None, 400, "tools"),
    ("tool without a function", "chat/completions", {**CHAT, "tools": [{"type": "function"}]}, None, 400, "tools"),
    ("tool of another type", "chat/completions", {**CHAT, "tools": [{**TOOL, "type": "retrieval"}]}, None, 400,
     "tools"),
    ("tool parameters a string", "chat/completions",
     {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]}, None, 400, "tools"),
    ("tool name missing", "chat/completions", {**CHAT, "tools": [{"type": "function", "function": {}}]}, None, 400,
     "tools"),
    ("tool declared twice", "chat/completions", {**CHAT, "tools": [TOOL, TOOL], "tool_choice": "required"}, None,
     400, "tools"),
    ("tool_choice required without tools", "chat/completions", {**CHAT, "tool_choice": "required"}, None, 400,
     "tool_choice"),
    ("tool_choice named without tools", "chat/completions", {**CHAT, "tool_choice": NAMED}, None, 400, "tool_choice"),
    ("tool_choice names an unknown function", "chat/completions",
     {**CHAT, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "send_mail"}}}, None, 400,
     "tool_choice"),
    ("tool_choice an unknown word", "chat/completions", {**CHAT, "tools": [TOOL], "tool_choice": "always"}, None,
     400, "tool_choice"),
    ("tool_choice auto without a parser", "chat/completions", {**CHAT, "tools": [TOOL], "tool_choice": "auto"},
     None, 400, "tool_choice"),
    ("tools (so auto) without a parser", "chat/completions", {**CHAT, "tools": [TOOL]}, None, 400, "tool_choice"),
    ("parallel_tool_calls a string", "chat/completions",
     {**CHAT, "tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": "no"}, None, 400,
     "parallel_tool_calls"),
    ("history call arguments not JSON", "chat/completions",
     {**CHAT, "messages": [*CHAT["messages"], {"role": "assistant", "content": None, "tool_calls": [
         {**CALL, "function": {"name": "get_weather", "arguments": "{city: Paris"}}]}]}, None, 400, "messages"),
    ("history call without an id", "chat/completions",
     {**CHAT, "messages": [*CHAT["messages"], {"role": "assistant", "tool_calls": [{"function": CALL["function"]}]}]},
     None, 400, "messages"),
    ("tool_choice required with response_format", "chat/completions",
     {**CHAT, "tools": [TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}}, None, 400,
     "tool_choice"),
    ("tool parameters schema does not compile", "chat/completions",
     {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nosuch"}}}],
      "tool_choice": "required"}, None, 400, "tools"),
    ("tool_calls on a user message", "chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": "hi", "tool_calls": [CALL]}]}, None, 400, "messages"),
    ("unknown role", "chat/completions", {**CHAT, "messages": [{"role": "alien", "content": "hi"}]}, None, 400,
     "messages"),
    ("body nested 5,000 deep", "completions", DEEP, None, 400, None),
    ("schema nested past the bound", "chat/completions",
     {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": _nested_schema(60)}}},
     None, 400, None),
    ("10 MB prompt", "completions", {**GOOD, "prompt": HUGE}, None, 400, "prompt"),
    ("10 MB in a prompt list", "completions", {**GOOD, "prompt": ["hi", HUGE]}, None, 400, "prompt"),
    ("10 MB chat message", "chat/completions", {**CHAT, "messages": [{"role": "user", "content": HUGE}]}, None, 400,
     "messages"),
    ("10 MB embeddings input", "embeddings", {"input": HUGE}, None, 400, "input"),
    ("unknown model", "completions", {**GOOD, "model": "gpt-17"}, None, 404, "model"),
    ("unknown model (chat)", "chat/completions", {**CHAT, "model": "gpt-17"}, None, 404, "model"),
]


async def _send(session, url, body, ctype):
    data = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
    ctype = "application/json" if ctype is None else ctype
    headers = {"Content-Type": ctype} if ctype else {}
    async with session.post(url, data=data, headers=headers) as resp:
        text = await resp.text()
        return resp.status, text


async def _matrix(url):
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session:
        before = await _send(session, f"{url}/v1/completions", GOOD, None)
        results = [await _send(session, f"{url}/v1/{path}", body, ctype) for _, path, body, ctype, _, _ in CASES]
        after = await _send(session, f"{url}/v1/completions", GOOD, None)
        async with session.get(f"{url}/health") as resp:
            health = resp.status
        async with session.get(f"{url}/v1/nowhere") as resp:
            unknown_path = resp.status, await resp.json()
    return before, results, after, health, unknown_path


def test_bad_requests_get_openai_errors_and_leave_no_trace(server):
    before, results, after, health, unknown_path = run(_matrix(server.url))
    assert before[0] == 200
    failures = []
    for (case, _, _, _, status, param), (got, text) in zip(CASES, results):
        try:
            error = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            failures.append(f"{case}: status {got}, not an error object: {text[:200]}")
            continue
        expected_type = "invalid_request_error"
        if (got, error["type"], error["param"]) != (status, expected_type, param) or not error["message"]:
            failures.append(f"{case}: got {got} {error}, expected {status} {expected_type} param={param}")
        if "code" not in error:
            failures.append(f"{case}: no code in {error}")
    assert not failures, "\n".join(failures)
    assert json.loads(results[[c[0] for c in CASES].index("unknown model")][1])["error"]["code"] == "model_not_found"
    # a rejected request leaves no trace; many do not make the replica unhealthy
    assert after == (200, after[1]) and json.loads(after[1])["choices"] == json.loads(before[1])["choices"]
    assert health == 200
    assert unknown_path[0] == 404 and unknown_path[1]["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("ctype", ["application/json; charset=utf-8", "Application/JSON"])
def test_content_type_parameters_are_accepted(server, ctype):
    async def go():
        async with aiohttp.ClientSession() as session:
            return await _send(session, f"{server.url}/v1/completions", json.dumps(GOOD), ctype)

    assert run(go())[0] == 200
