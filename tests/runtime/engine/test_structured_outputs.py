"""Structured outputs on the engine (`LLM.generate`), over a tiny random model: its outputs are
random, so the constraint does all the work. For 50 seeded sampled requests per kind, every
output parses and validates (JSON schema with `jsonschema`, regex with `re.fullmatch`, choice,
Lark and GBNF grammars with Python's own parser); greedy under a constraint the greedy tokens
satisfy is unconstrained greedy; a seed reproduces its tokens in any batch and on both kernel
backends; the grammar decides when EOS may come and when the output is complete; a model's
padded vocabulary rows are never drawn; a matcher lost mid-way is rebuilt from the tokens; a
grammar that does not compile is a ValueError before anything is queued."""

from __future__ import annotations

import ast
import json
import re

import jsonschema
import pytest

from tideflow import LLM, SamplingParams
from tideflow.sampling_params import StructuredOutputsParams
from tideflow.testing.tiny_models import EOS_ID, TOKENIZER_VOCAB_SIZE

PROMPT = {"prompt_token_ids": [5, 9, 11, 30]}
N = 50

PERSON = {  # bounded: every completion fits in max_tokens, so every output must be complete
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "ok"],
    "additionalProperties": False,
}
EMAIL = r"[a-z]{2,6}@[a-z]{2,5}\.(com|org)"
COLOURS = ("red", "green", "blue", "dark blue")
# a call f_name(arg, arg) with int or string arguments, in Lark and in GBNF; Python parses both
CALL_LARK = r"""
start: NAME "(" args? ")"
args: arg ("," arg)?
arg: NUMBER | STRING
NAME: /f_[a-z]{1,6}/
NUMBER: /[1-9][0-9]{0,3}/
STRING: /"[a-z ]{0,8}"/
"""
CALL_GBNF = r"""
root ::= name "(" args? ")"
args ::= arg ("," arg)?
arg ::= number | string
name ::= "f_" [a-z]{1,6}
number ::= [1-9] [0-9]{0,3}
string ::= "\"" [a-z ]{0,8} "\""
"""


def _is_call(text: str) -> bool:
    """`text` is f_<name>(...) with at most two int (1..9999) or short lowercase string arguments."""
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return False
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords):
        return False
    if not re.fullmatch(r"f_[a-z]{1,6}", node.func.id) or len(node.args) > 2:
        return False
    return all(
        isinstance(a, ast.Constant) and (
            (type(a.value) is int and 1 <= a.value <= 9999) or (isinstance(a.value, str) and re.fullmatch(r"[a-z ]{0,8}", a.value))
        )
        for a in node.args
    )


def _valid_person(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), PERSON)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


KINDS = {  # kind -> (constraint, check of one output text)
    "json": (StructuredOutputsParams(json=PERSON), _valid_person),
    "json_text": (StructuredOutputsParams(json=json.dumps(PERSON)), _valid_person),
    "regex": (StructuredOutputsParams(regex=EMAIL), lambda t: re.fullmatch(EMAIL, t) is not None),
    "choice": (StructuredOutputsParams(choice=COLOURS), lambda t: t in COLOURS),
    "lark": (StructuredOutputsParams(grammar=CALL_LARK), _is_call),
    "gbnf": (StructuredOutputsParams(grammar=CALL_GBNF), _is_call),
}


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir("llama"), dtype="float32")


def _sampled(llm, constraint, n=N, seeds=None, max_tokens=160, **params):
    seeds = range(n) if seeds is None else seeds
    params = [SamplingParams(seed=s, max_tokens=max_tokens, structured_outputs=constraint, **params) for s in seeds]
    return [o.outputs[0] for o in llm.generate([PROMPT] * len(params), params, use_tqdm=False)]


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_sampled_output_parses_under_its_constraint(llm, kind):
    constraint, valid = KINDS[kind]
    outs = _sampled(llm, constraint)
    bad = [o.text for o in outs if not valid(o.text)]
    assert not bad, f"{len(bad)}/{N} {kind} outputs do not parse: {bad[:3]}"
    assert all(o.finish_reason == "stop" for o in outs)
    assert len({o.text for o in outs}) > 1, "50 seeds gave one output: the sampling is not random"
    # without the constraint the same seeds produce nothing of the kind
    free = llm.generate([PROMPT] * 5, [SamplingParams(seed=s, max_tokens=40) for s in range(5)], use_tqdm=False)
    assert not any(valid(o.outputs[0].text) for o in free)


def test_json_object_outputs_are_objects_when_complete(llm):
    """Any JSON object is unbounded (a random model writes long strings): outputs that finish
    are objects, and the ones max_tokens cuts are still on the way to one."""
    outs = _sampled(llm, {"json_object": True}, n=20, max_tokens=48)
    done = [o for o in outs if o.finish_reason == "stop"]
    assert done, "no object finished in 48 tokens"
    assert all(isinstance(json.loads(o.text), dict) for o in done)
    assert all(o.text.startswith("{") for o in outs)


def _greedy(llm, prompt, max_tokens=12, **params):
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=max_tokens, **params), use_tqdm=False)
    return out[0].outputs[0]


def test_greedy_under_a_satisfied_constraint_is_unconstrained_greedy(llm):
    free = _greedy(llm, PROMPT)
    assert min(free.token_ids) >= 5, "the reference picks a special token: choose another prompt"
    # every ordinary token allowed (the mask is all but the special tokens): the argmax survives
    loose = _greedy(llm, PROMPT, structured_outputs={"grammar": "start: <[5-511]>*"})
    assert loose.token_ids == free.token_ids and loose.finish_reason == "length"
    # exactly those tokens: the output is complete after the last one and stops there
    exact = " ".join(f"<[{t}]>" for t in free.token_ids)
    tight = _greedy(llm, PROMPT, max_tokens=40, structured_outputs={"grammar": f"start: {exact}"})
    assert tight.token_ids == free.token_ids and tight.finish_reason == "stop"


def test_a_seed_reproduces_its_tokens_in_any_batch(llm):
    constraint = KINDS["json"][0]
    alone = [o.token_ids for o in _sampled(llm, constraint, seeds=range(6))]
    others = [SamplingParams(seed=100 + i, max_tokens=20) for i in range(4)]
    mixed = [SamplingParams(seed=s, max_tokens=160, structured_outputs=constraint) for s in reversed(range(6))]
    out = llm.generate([PROMPT] * 10, others[:2] + mixed + others[2:], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in out[2:8]] == alone[::-1]


def test_both_kernel_backends_give_the_same_constrained_tokens(llm, tiny_model_dir):
    reference = LLM(tiny_model_dir("llama"), dtype="float32", kernel_backend="torch")
    for kind in ("json", "regex", "lark"):
        constraint = KINDS[kind][0]
        params = [SamplingParams(seed=s, max_tokens=160, structured_outputs=constraint, top_p=0.9) for s in range(8)]
        params.append(SamplingParams(temperature=0, max_tokens=160, structured_outputs=constraint))
        got = [o.outputs[0].token_ids for o in llm.generate([PROMPT] * 9, params, use_tqdm=False)]
        want = [o.outputs[0].token_ids for o in reference.generate([PROMPT] * 9, params, use_tqdm=False)]
        assert got == want, kind


def test_eos_only_where_the_grammar_accepts_and_a_complete_output_stops(llm):
    # complete after one choice: stops there, without sampling an EOS token
    (out,) = _sampled(llm, StructuredOutputsParams(choice=("abc",)), n=1)
    assert out.text == "abc" and out.finish_reason == "stop" and EOS_ID not in out.token_ids
    # digits may end at any point: EOS comes from the model, and only once a digit is there
    outs = _sampled(llm, StructuredOutputsParams(regex=r"[0-9]+"), n=30, max_tokens=40)
    for o in outs:
        assert re.fullmatch(r"[0-9]+", o.text), o.text
        if o.token_ids[-1] == EOS_ID:
            assert len(o.token_ids) > 1 and o.finish_reason == "stop"
    # ignore_eos: the grammar is not offered EOS, so only max_tokens ends it
    outs = _sampled(llm, StructuredOutputsParams(regex=r"[0-9]+"), n=10, ignore_eos=True, max_tokens=40)
    assert all(len(o.token_ids) == 40 and EOS_ID not in o.token_ids and o.text.isdigit() for o in outs)


def test_padded_vocabulary_rows_are_never_drawn(tmp_path):
    """A model whose logits are wider than its tokenizer (600 rows, 512 tokens): unconstrained
    sampling draws the padded ids, a constraint never does."""
    from tideflow.testing.tiny_models import write_tiny_model

    padded = LLM(str(write_tiny_model("llama", tmp_path / "padded", seed=0, vocab_size=600)), dtype="float32")
    free = padded.generate([PROMPT] * 8, [SamplingParams(seed=s, max_tokens=24) for s in range(8)], use_tqdm=False)
    assert max(t for o in free for t in o.outputs[0].token_ids) >= TOKENIZER_VOCAB_SIZE
    loose = {"grammar": "start: <[5-511]>*"}  # allows every token of the tokenizer; the rest is padding
    outs = padded.generate([PROMPT] * 8, [SamplingParams(seed=s, max_tokens=24, structured_outputs=loose)
                                          for s in range(8)], use_tqdm=False)
    assert all(t < TOKENIZER_VOCAB_SIZE for o in outs for t in o.outputs[0].token_ids)


def test_a_matcher_lost_mid_way_is_rebuilt_from_the_tokens(llm):
    """A sequence that arrives without its matcher (adopted by decode, replayed, restored)
    continues exactly as the one that kept it."""
    constraint = KINDS["json"][0]
    params = SamplingParams(seed=7, max_tokens=160, structured_outputs=constraint)
    (reference,) = _sampled(llm, constraint, seeds=[7])
    engine = llm.engine
    engine.add_request("lost", PROMPT["prompt_token_ids"], params)
    seq = engine.sequence("lost", 0)
    for step in range(40):
        if seq.finished:
            break
        engine.step()
        if step in (2, 5, 9):
            seq.grammar = None
    assert seq.finished
    engine.pop_finished("lost")
    assert seq.output_token_ids == reference.token_ids and _valid_person(llm.get_tokenizer().decode(seq.output_token_ids,
                                                                                                    skip_special_tokens=True))


@pytest.mark.parametrize("constraint, field", [
    ({"json": {"type": "nosuch"}}, "structured_outputs.json"),
    ({"json": '{"type": '}, "structured_outputs.json"),
    ({"json": "[1, 2]"}, "structured_outputs.json"),
    ({"regex": "a(b"}, "structured_outputs.regex"),
    ({"grammar": "start: foo"}, "structured_outputs.grammar"),
    ({"grammar": "root ::= [a-"}, "structured_outputs.grammar"),
])
def test_a_grammar_that_does_not_compile_is_refused_before_queueing(llm, constraint, field):
    good = SamplingParams(max_tokens=4, structured_outputs={"regex": "[a-z]+"})
    with pytest.raises(ValueError, match=re.escape(field)):
        llm.generate([PROMPT, PROMPT], [good, SamplingParams(max_tokens=4, structured_outputs=constraint)],
                     use_tqdm=False)
    assert llm.engine.num_unfinished == 0  # the good request was not queued either


def test_structured_outputs_params_are_validated():
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(regex="a", choice=["a"])
    with pytest.raises(ValueError, match="exactly one"):
        SamplingParams(structured_outputs={})
    with pytest.raises(ValueError, match="choice must be a list"):
        StructuredOutputsParams(choice="abc")
    with pytest.raises(ValueError, match="non-empty string"):
        StructuredOutputsParams(regex="")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['xml'\]"):
        SamplingParams(structured_outputs={"xml": "<a/>"})
    assert StructuredOutputsParams(choice=["a", "b"]).as_dict() == {"choice": ["a", "b"]}
    assert SamplingParams(structured_outputs={"json_object": True}).structured_outputs.kind == "json_object"
