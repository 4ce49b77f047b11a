"""The grammar cache compiles each grammar once and stays within its bound (least recently used
out first); a sequence matcher follows its tokens, backwards too; bad grammars are refused."""

from __future__ import annotations

import pytest

from tideflow.runtime.engine.structured.grammar import compile_grammar, grammar_key
from tideflow.runtime.engine.structured.grammar_cache import GrammarCache
from tideflow.runtime.engine.structured.sequence_matcher import SequenceMatcher
from tideflow.sampling_params import StructuredOutputsParams as S


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from llguidance.hf import from_tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_model_dir("llama"))
    return hf, from_tokenizer(hf)


def test_each_grammar_compiles_once_within_the_bound(tokenizer):
    cache = GrammarCache(tokenizer[1], capacity=2)
    a, b, c = S(regex="a+"), S(choice=["x", "y"]), S(json={"type": "integer"})
    cache.matcher(a), cache.matcher(b), cache.matcher(a)  # a is now the most recent
    assert (cache.misses, cache.hits, len(cache)) == (2, 1, 2)
    cache.matcher(c)  # evicts b, the least recently used
    cache.matcher(a)
    assert (cache.misses, cache.hits, len(cache)) == (3, 2, 2)
    cache.matcher(b)
    assert cache.misses == 4  # b was compiled again
    with pytest.raises(ValueError, match="structured_outputs.regex"):
        cache.matcher(S(regex="a(b"))
    assert len(cache) == 2 and cache.misses == 4
    with pytest.raises(ValueError, match="capacity"):
        GrammarCache(tokenizer[1], capacity=0)


def test_copies_are_independent_and_equal_schemas_share_a_key(tokenizer):
    hf, lt = tokenizer
    cache = GrammarCache(lt)
    first = SequenceMatcher(cache.matcher(S(choice=["abc", "abd"])))
    second = SequenceMatcher(cache.matcher(S(choice=["abc", "abd"])))
    ids = hf.encode("abc", add_special_tokens=False)
    first.sync(ids, 0)
    assert first.finished and not second.finished and second.num_tokens == 0
    assert grammar_key(S(json={"a": 1, "b": 2})) != grammar_key(S(json={"b": 2, "a": 1}))  # property order matters
    assert grammar_key(S(json={"a": 1})) == grammar_key(S(json={"a": 1}))


def test_a_matcher_follows_its_tokens_forward_and_back(tokenizer):
    hf, lt = tokenizer
    matcher = SequenceMatcher(GrammarCache(lt).matcher(S(regex="[0-9]{2}-[0-9]{2}")))
    prompt = [7, 8, 9]
    tokens = prompt + hf.encode("12-34", add_special_tokens=False)
    matcher.sync(tokens[:-1], len(prompt))
    assert not matcher.finished and matcher.num_tokens == len(tokens) - 1 - len(prompt)
    matcher.sync(tokens, len(prompt))
    assert matcher.finished and matcher.error is None
    matcher.sync(tokens[: len(prompt) + 1], len(prompt))  # fewer tokens: back to the start, then forward
    assert not matcher.finished and matcher.num_tokens == 1
    matcher.sync(prompt + hf.encode("1x", add_special_tokens=False), len(prompt))  # a token the grammar rejects
    assert matcher.error is not None


def test_compile_errors_name_the_field():
    for spec, field in ((S(json="[1]"), "json"), (S(json='{"type": "nosuch"}'), "json"), (S(regex="(("), "regex"),
                        (S(grammar="start: nothing_here"), "grammar")):
        with pytest.raises(ValueError, match=rf"^structured_outputs\.{field}: "):
            compile_grammar(spec)
    assert compile_grammar(S(json_object=True)) and compile_grammar(S(choice=['say "hi"', "no"]))
