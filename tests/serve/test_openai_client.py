"""The official `openai` client against the server: completions, chat (whole and streamed),
n, logprobs, seeds, and greedy parity with the offline `LLM` on the same model."""

from __future__ import annotations

import pytest

from tideflow import SamplingParams

PROMPTS = ["def fibonacci(n):", "The quick brown fox", "import os\nimport sys\n"]
MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Sort a list"}]


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="any", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(server):
    """Greedy outputs of the offline engine on the same model and dtype."""
    from tideflow import LLM

    llm = LLM(server.model_dir, dtype="float64")
    greedy = SamplingParams(temperature=0, max_tokens=12)
    completions = llm.generate(PROMPTS, greedy, use_tqdm=False)
    chat = llm.chat(MESSAGES, greedy, use_tqdm=False)[0]
    return completions, chat


def test_models_lists_the_served_model(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model] == ["llama"]
    assert client.models.retrieve("llama").id == "llama"


def test_greedy_completions_equal_the_offline_engine_token_for_token(client, server, reference):
    expected, _ = reference
    out = client.completions.create(
        model=server.model, prompt=PROMPTS, max_tokens=12, temperature=0, logprobs=0,
        extra_body={"return_tokens_as_token_ids": True},
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    for choice, ref in zip(out.choices, expected):
        ids = [int(t.removeprefix("token_id:")) for t in choice.logprobs.tokens]
        assert ids == ref.outputs[0].token_ids
        assert choice.text == ref.outputs[0].text
        assert choice.finish_reason == ref.outputs[0].finish_reason == "length"
    assert out.usage.prompt_tokens == sum(len(r.prompt_token_ids) for r in expected)
    assert out.usage.completion_tokens == 36 and out.usage.total_tokens == out.usage.prompt_tokens + 36


def test_token_id_prompts(client, server, reference):
    expected, _ = reference
    ids = [r.prompt_token_ids for r in expected[:2]]
    one = client.completions.create(model=server.model, prompt=ids[0], max_tokens=12, temperature=0)
    assert one.choices[0].text == expected[0].outputs[0].text
    both = client.completions.create(model=server.model, prompt=ids, max_tokens=12, temperature=0)
    assert [c.text for c in both.choices] == [r.outputs[0].text for r in expected[:2]]


def test_chat_applies_the_template_and_equals_the_offline_engine(client, server, reference):
    _, expected = reference
    out = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=12, temperature=0)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected.outputs[0].text
    assert out.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert out.usage.completion_tokens == 12
    # max_completion_tokens and list-of-parts content
    parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in MESSAGES]
    again = client.chat.completions.create(model=server.model, messages=parts, max_completion_tokens=12, temperature=0)
    assert again.choices[0].message.content == expected.outputs[0].text


def test_streamed_chat_sends_deltas_then_usage(client, server, reference):
    _, expected = reference
    stream = client.chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.outputs[0].text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # it streamed
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_completion_with_n_2(client, server):
    stream = client.completions.create(
        model=server.model, prompt=PROMPTS[0], max_tokens=8, n=2, temperature=1.0, seed=3, stream=True,
    )
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1} and all(texts.values())
    whole = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=8, n=2, temperature=1.0, seed=3)
    assert [c.text for c in whole.choices] == [texts[0], texts[1]]


def test_n_2_gives_two_choices(client, server):
    out = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=8, n=2, temperature=1.0,
                                         seed=11)
    assert sorted(c.index for c in out.choices) == [0, 1]
    assert out.usage.completion_tokens == 16


def test_logprobs(client, server, reference):
    expected, _ = reference
    out = client.completions.create(model=server.model, prompt=PROMPTS[1], max_tokens=12, temperature=0, logprobs=3,
                                    extra_body={"return_tokens_as_token_ids": True})
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 12
    assert [int(t.removeprefix("token_id:")) for t in lp.tokens] == expected[1].outputs[0].token_ids
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and len(top) == 3
        assert top[token] == logprob == max(top.values())  # greedy: the chosen token is the most likely
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    text = client.completions.create(model=server.model, prompt=PROMPTS[1], max_tokens=12, temperature=0, logprobs=0)
    assert all(isinstance(t, str) for t in text.choices[0].logprobs.tokens)
    assert all(len(top) == 1 for top in text.choices[0].logprobs.top_logprobs)
    chat = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=5, temperature=0,
                                          logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == 5
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob == c.logprob <= 0 for c in content)
    plain = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None


def test_seed_makes_sampling_reproducible(client, server):
    def sample(seed):
        out = client.completions.create(model=server.model, prompt=PROMPTS[2], max_tokens=16, temperature=1.0,
                                        top_p=0.95, seed=seed)
        return out.choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(s) != first for s in (1, 2, 3))


def _stop_string_in(text: str) -> str:
    """The shortest non-blank substring of `text`, without U+FFFD (what a random model's stray
    bytes decode to), that first occurs at a position past its first character, preferring
    positions from the middle on: cutting `text` before it leaves a non-empty prefix."""
    mid = max(len(text) // 2, 1)
    for start in [*range(mid, len(text)), *range(1, mid)]:
        for end in range(start + 1, len(text) + 1):
            stop = text[start:end]
            if stop.strip() and "\ufffd" not in stop and text.find(stop) == start:
                return stop
    raise AssertionError(f"no stop string can be chosen from {text!r}")


def test_stop_strings_and_sampling_extras(client, server):
    greedy = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=12, temperature=0)
    text = greedy.choices[0].text
    stop = _stop_string_in(text)
    # the stop string ends within the first 12 tokens, so 16 leaves no tie with the length limit
    out = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=16, temperature=0, stop=[stop])
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == text[: text.index(stop)] != ""
    assert out.usage.completion_tokens <= 12
    extras = client.completions.create(
        model=server.model, prompt=PROMPTS[0], max_tokens=12, temperature=0.7, top_p=0.9, seed=5, user="u1",
        presence_penalty=0.5, frequency_penalty=0.5,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True},
    )
    assert extras.usage.completion_tokens == 12


def test_echo_puts_the_prompt_before_the_completion(client, server, reference):
    expected, _ = reference
    out = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=12, temperature=0, echo=True)
    assert out.choices[0].text == PROMPTS[0] + expected[0].outputs[0].text
    stream = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=12, temperature=0, echo=True,
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == out.choices[0].text


def test_parse_with_a_pydantic_model_returns_the_parsed_object(client, server):
    """`chat.completions.parse(response_format=Model)` sends the model's JSON schema (strict);
    the tiny random model's answer parses into the model, for greedy and seeded sampling."""
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        name: str = Field(max_length=8)
        age: int = Field(ge=0, le=120)
        retired: bool

    for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 1}, {"temperature": 1.0, "seed": 2}):
        out = client.chat.completions.parse(model=server.model, messages=MESSAGES, response_format=Person,
                                            max_tokens=80, **sampling)
        person = out.choices[0].message.parsed
        assert isinstance(person, Person) and 0 <= person.age <= 120 and len(person.name) <= 8
        assert out.choices[0].finish_reason == "stop"
