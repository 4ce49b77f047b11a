"""The offline API end to end on a tiny model: sampling contracts and argument validation."""

from __future__ import annotations

import pytest

from tideflow import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir("llama"), dtype="float32", max_model_len=256, num_kv_blocks=128)


PROMPTS = ["def add(a, b):", "The quick brown fox", "import os\n", "class Stack:"]


def _tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_outputs_keep_prompt_order_and_fields(llm):
    out = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)
    tok = llm.get_tokenizer()
    assert [o.prompt for o in out] == PROMPTS
    for o, p in zip(out, PROMPTS):
        assert o.finished and o.prompt_token_ids == tok.encode(p)
        c = o.outputs[0]
        assert c.finish_reason in ("stop", "length") and 1 <= len(c.token_ids) <= 6
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)


def test_top_k_1_equals_greedy(llm):
    greedy = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    topk1 = llm.generate(PROMPTS, SamplingParams(temperature=1.0, top_k=1, max_tokens=12, seed=3), use_tqdm=False)
    assert _tokens(greedy) == _tokens(topk1)


def test_seeded_request_is_independent_of_its_batch(llm):
    target = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16)
    alone = llm.generate([PROMPTS[0]], target, use_tqdm=False)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=0.7, max_tokens=20 + i) for i in range(5)]
    batch = llm.generate(["x = 1", PROMPTS[1], PROMPTS[0], "y", "z = [", "#"], [others[0], others[1], target, *others[2:]], use_tqdm=False)
    assert batch[2].outputs[0].token_ids == alone
    unseeded = [llm.generate([PROMPTS[0]], SamplingParams(temperature=1.0, max_tokens=16), use_tqdm=False)[0].outputs[0].token_ids for _ in range(3)]
    assert len({tuple(t) for t in unseeded}) > 1  # unseeded draws differ from call to call


def test_n_completions_differ_and_each_has_its_own_index(llm):
    out = llm.generate([PROMPTS[1]], SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=10), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) == 3


def test_stop_string_cuts_the_text_where_it_begins(llm):
    base = llm.generate([PROMPTS[2]], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True), use_tqdm=False)[0].outputs[0]
    text = base.text
    assert len(text) > 6
    stop = text[3:6]
    cut = llm.generate([PROMPTS[2]], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop]), use_tqdm=False)[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == text[: text.index(stop)]
    kept = llm.generate(
        [PROMPTS[2]], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop], include_stop_str_in_output=True), use_tqdm=False
    )[0].outputs[0]
    assert kept.text == text[: text.index(stop) + len(stop)]


def test_stop_token_ids_and_max_tokens(llm):
    base = llm.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), use_tqdm=False)[0].outputs[0]
    stop_tok = base.token_ids[4]
    first = base.token_ids.index(stop_tok)
    out = llm.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, stop_token_ids=[stop_tok]), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == base.token_ids[: first + 1] and out.stop_reason == stop_tok
    assert base.finish_reason == "length" and len(base.token_ids) == 10


def test_logprobs_hold_the_sampled_token_and_top_n(llm):
    out = llm.generate([PROMPTS[3]], SamplingParams(temperature=0, max_tokens=5, logprobs=3), use_tqdm=False)[0].outputs[0]
    assert len(out.logprobs) == len(out.token_ids)
    total = 0.0
    for tok, pos in zip(out.token_ids, out.logprobs):
        assert tok in pos and pos[tok].rank == 1  # greedy takes the top token
        assert len(pos) == 3 and all(lp.logprob <= 0 for lp in pos.values())
        assert sorted(lp.rank for lp in pos.values()) == [1, 2, 3]
        assert all(lp.decoded_token is not None for lp in pos.values())
        total += pos[tok].logprob
    assert out.cumulative_logprob == pytest.approx(total)


def test_chat_applies_the_template(llm):
    messages = [{"role": "user", "content": "Say hi"}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    tok = llm.get_tokenizer()
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert out.prompt == expected and out.prompt_token_ids == tok.encode(expected, add_special_tokens=False)
    direct = llm.generate([{"prompt_token_ids": out.prompt_token_ids}], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    assert direct.outputs[0].token_ids == out.outputs[0].token_ids


def test_chat_gives_tools_to_the_template_and_can_hold_the_reply_to_a_call(tiny_model_dir):
    from tests.serve.tool_chat import QWEN25_TOOLS_TEMPLATE, TOOLS

    llm = LLM(tiny_model_dir("llama"), dtype="float32", max_model_len=1024, num_kv_blocks=80)  # tools make long prompts

    messages = [{"role": "user", "content": "Weather in Rome?"}]
    city = {"type": "object", "required": ["city"], "additionalProperties": False,  # bounded: it must finish
            "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}}}
    call_schema = {"type": "object", "required": ["name", "arguments"], "additionalProperties": False,
                   "properties": {"name": {"const": "get_weather"}, "arguments": city}}
    params = SamplingParams(temperature=0, max_tokens=48, structured_outputs={"json": call_schema})
    out = llm.chat(messages, params, chat_template=QWEN25_TOOLS_TEMPLATE, tools=TOOLS, use_tqdm=False)[0]
    expected = llm.get_tokenizer().apply_chat_template(messages, tools=TOOLS, chat_template=QWEN25_TOOLS_TEMPLATE,
                                                       tokenize=False, add_generation_prompt=True)
    assert out.prompt == expected and '"name": "get_weather"' in out.prompt
    import json

    import jsonschema

    assert out.outputs[0].finish_reason == "stop"  # the call's JSON completed
    jsonschema.validate(json.loads(out.outputs[0].text), call_schema)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(max_tokens=0), "max_tokens"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(n=0), "n"),
        (dict(top_k=-2), "top_k"),
        (dict(min_p=2), "min_p"),
        (dict(presence_penalty=3), "presence_penalty"),
        (dict(logprobs=-1), "logprobs"),
        (dict(stop=[""]), "stop"),
    ],
)
def test_bad_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"prompt_token_ids": list(range(5, 300))}, "context length"),
        ({"prompt_token_ids": [5, 6, 10_000]}, "outside the vocabulary"),
        ({"prompt_token_ids": [5, -1]}, "outside the vocabulary"),
        ({"prompt_token_ids": []}, "empty"),
        ("", "empty"),
        (42, "expected a string"),
    ],
)
def test_bad_prompts_raise_and_leave_the_engine_untouched(llm, prompt, message):
    params = SamplingParams(temperature=0, max_tokens=6)
    before = llm.generate([PROMPTS[0]], params, use_tqdm=False)[0].outputs[0].token_ids
    with pytest.raises(ValueError, match=message):
        llm.generate([PROMPTS[1], prompt], params, use_tqdm=False)
    engine = llm.engine
    assert not engine.has_unfinished() and not engine.requests
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    assert llm.generate([PROMPTS[0]], params, use_tqdm=False)[0].outputs[0].token_ids == before


def test_a_request_larger_than_the_kv_pool_is_rejected(tiny_model_dir):
    small = LLM(tiny_model_dir("llama"), dtype="float32", num_kv_blocks=4, block_size=16)
    with pytest.raises(ValueError, match="KV blocks"):
        small.generate([{"prompt_token_ids": list(range(5, 70))}], SamplingParams(max_tokens=8), use_tqdm=False)


def test_sampling_params_list_must_match_prompts(llm):
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(PROMPTS, [SamplingParams()] * 2, use_tqdm=False)
