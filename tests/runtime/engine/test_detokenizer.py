import inspect
import json
import random
import textwrap

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tideflow.outputs import Logprob
from tideflow.runtime.engine.detokenizer import Detokenizer
from tideflow.runtime.engine.core.sequence import Sequence
from tideflow.sampling_params import SamplingParams

UNICODE_TEXT = (
    "Grüße aus Köln, déjà vu, naïve café. 日本語のテキストです。中文文本测试，你好世界！"
    " Emoji: 😀🎉👍🏽🇯🇵 👨‍👩‍👧 — наука и жизнь, ελληνικά, עברית, हिन्दी. "
)
CHAR_POOL = (
    list("abcdefghijklmnopqrstuvwxyz     ABCXYZ0123456789.,;:!?()[]{}'\"\n\t_-=+*/#")
    + list("éüßçø日本語中文你好世界テキスト") + ["😀", "🎉", "👍🏽", "🇯🇵", "🦀", "€", "∑", "ア", "ग"]
)


@pytest.fixture(scope="module")
def tokenizer():
    """A small byte-level BPE (GPT-2 style) with two special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<|endoftext|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([inspect.getsource(json), inspect.getsource(textwrap), UNICODE_TEXT * 4], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", additional_special_tokens=["<|im_start|>"]
    )


@pytest.fixture(scope="module")
def metaspace_tokenizer():
    """A SentencePiece-style tokenizer whose decode drops the leading space of the first token."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>"], show_progress=False)
    tok.train_from_iterator([inspect.getsource(textwrap)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def make_seq(prompt_ids, params=None):
    params = params or SamplingParams()
    return Sequence("r", 0, list(prompt_ids), len(prompt_ids), params, max_tokens=1000)


def stream(detok, prompt_ids, output_ids, params=None):
    """Feeds output_ids one at a time; returns (seq, per-step text deltas, stop result, step it stopped at)."""
    seq = make_seq(prompt_ids, params)
    deltas = []
    for step, tok in enumerate(output_ids):
        before = seq.output_text
        seq.token_ids.append(tok)
        stop = detok.update(seq)
        if stop is not None:
            return seq, deltas, stop, step
        assert seq.output_text.startswith(before)
        deltas.append(seq.output_text[len(before) :])
    return seq, deltas, None, None


def random_text(rng, n):
    return "".join(rng.choice(CHAR_POOL) for _ in range(n))


def test_incremental_equals_full_decode_on_random_texts(tokenizer):
    detok = Detokenizer(tokenizer)
    rng = random.Random(0)
    for _ in range(300):
        prompt = tokenizer.encode(random_text(rng, rng.randrange(0, 30)), add_special_tokens=False)
        output = tokenizer.encode(random_text(rng, rng.randrange(1, 60)), add_special_tokens=False)
        seq, deltas, _, _ = stream(detok, prompt, output)
        assert "".join(deltas) == seq.output_text == tokenizer.decode(output, skip_special_tokens=True)


def test_incremental_equals_full_decode_when_split_inside_a_text(tokenizer):
    """Prompt and output cut from one token stream, at any boundary where both halves are valid text."""
    detok = Detokenizer(tokenizer)
    rng = random.Random(1)
    checked = 0
    while checked < 200:
        ids = tokenizer.encode(random_text(rng, 80), add_special_tokens=False)
        cut = rng.randrange(0, len(ids))
        prompt, output = ids[:cut], ids[cut:]
        if "\ufffd" in tokenizer.decode(prompt) or "\ufffd" in tokenizer.decode(output):
            continue
        seq, _, _, _ = stream(detok, prompt, output)
        assert seq.output_text == tokenizer.decode(output)
        checked += 1


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_incremental_equals_full_decode_on_random_token_ids(tokenizer, skip_special_tokens):
    """Arbitrary id sequences (special tokens included) that decode to valid text."""
    detok = Detokenizer(tokenizer)
    params = SamplingParams(skip_special_tokens=skip_special_tokens)
    rng = random.Random(2)
    vocab = len(tokenizer)
    checked = 0
    while checked < 300:
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(2, 40))]
        cut = rng.randrange(0, len(ids))
        prompt, output = ids[:cut], ids[cut:]
        full = tokenizer.decode(output, skip_special_tokens=skip_special_tokens)
        if "\ufffd" in full or "\ufffd" in tokenizer.decode(prompt):
            continue
        seq, _, _, _ = stream(detok, prompt, output, params)
        assert seq.output_text == full
        checked += 1


def test_multibyte_characters_wait_until_complete(tokenizer):
    detok = Detokenizer(tokenizer)
    output = tokenizer.encode("x😀🇯🇵日本", add_special_tokens=False)
    assert len(output) > 5  # the emoji and CJK are split into byte tokens
    _, deltas, _, _ = stream(detok, tokenizer.encode("hi", add_special_tokens=False), output)
    assert "".join(deltas) == "x😀🇯🇵日本"
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # some steps had to hold back half a character


def test_special_tokens(tokenizer):
    detok = Detokenizer(tokenizer)
    eos, start = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_start|>")
    hello = tokenizer.encode(" hello", add_special_tokens=False)
    output = [start] + hello + [eos]
    prompt = [start] + tokenizer.encode("say", add_special_tokens=False)
    seq, _, _, _ = stream(detok, prompt, output)
    assert seq.output_text == " hello"
    seq, _, _, _ = stream(detok, prompt, output, SamplingParams(skip_special_tokens=False))
    assert seq.output_text == "<|im_start|> hello<|endoftext|>"
    assert detok.decode(output) == " hello"
    assert detok.decode(output, skip_special_tokens=False) == "<|im_start|> hello<|endoftext|>"


def test_prompt_context_keeps_leading_space(metaspace_tokenizer):
    tok = metaspace_tokenizer
    detok = Detokenizer(tok)
    ids = tok.encode("import the module", add_special_tokens=False)
    cut = next(c for c in range(len(ids)) if tok.decode(ids[:c]) == "import")
    prompt, output = ids[:cut], ids[cut:]
    assert tok.decode(output) == "the module"  # decoding alone drops the space
    seq, _, _, _ = stream(detok, prompt, output)
    assert seq.output_text == " the module"
    # with no prompt there is no context and the text starts as a full decode does
    seq, _, _, _ = stream(detok, [], ids)
    assert seq.output_text == tok.decode(ids) == "import the module"


def test_stop_string_spanning_tokens_cuts_exactly(tokenizer):
    detok = Detokenizer(tokenizer)
    text = "def encode(self, obj):\n    return obj  # 日本語😀 END of it\nmore"
    output = tokenizer.encode(text, add_special_tokens=False)
    prompt = tokenizer.encode("x = ", add_special_tokens=False)
    for stop in ["return obj", "日本語😀 E", "(self", "ND of", "\nmo", "more"]:
        assert len(tokenizer.encode(stop, add_special_tokens=False)) > 1
        seq, _, found, step = stream(detok, prompt, output, SamplingParams(stop=[stop]))
        at = text.index(stop)
        assert found == stop
        assert seq.output_text == text[:at]
        # it stopped at the first token whose text completes the stop string
        assert len(tokenizer.decode(output[:step])) < at + len(stop) <= len(tokenizer.decode(output[: step + 1]))
        seq, _, found, _ = stream(
            detok, prompt, output, SamplingParams(stop=[stop], include_stop_str_in_output=True)
        )
        assert found == stop and seq.output_text == text[: at + len(stop)]


def test_stop_strings_random(tokenizer):
    detok = Detokenizer(tokenizer)
    rng = random.Random(3)
    for _ in range(200):
        text = random_text(rng, 60)
        output = tokenizer.encode(text, add_special_tokens=False)
        start = rng.randrange(0, len(text) - 1)
        stop = text[start : start + rng.randrange(1, 8)]
        include = rng.random() < 0.5
        seq, _, found, _ = stream(
            detok, [], output, SamplingParams(stop=[stop, "\x00never"], include_stop_str_in_output=include)
        )
        at = text.index(stop)
        assert found == stop
        assert seq.output_text == text[: at + len(stop) if include else at]


def test_earliest_stop_string_wins_and_prompt_is_not_searched(tokenizer):
    detok = Detokenizer(tokenizer)
    prompt = tokenizer.encode("STOP here", add_special_tokens=False)
    output = tokenizer.encode(" string.encode", add_special_tokens=False)  # " string", ".", "encode"
    # both stop strings complete with the last token; the one that begins first wins
    seq, _, found, step = stream(detok, prompt, output, SamplingParams(stop=["STOP", "encode", "g.enc"]))
    assert (found, step, seq.output_text) == ("g.enc", len(output) - 1, " strin")


def test_context_cut_inside_a_character(tokenizer):
    """A prompt given as ids may end inside a character; the output then decodes as it would alone."""
    detok = Detokenizer(tokenizer)
    ids = tokenizer.encode("ok 😀 fine 日本", add_special_tokens=False)
    for cut in range(1, len(ids)):
        if not tokenizer.decode(ids[:cut]).endswith("\ufffd"):
            continue
        output = ids[cut:] + tokenizer.encode(" done", add_special_tokens=False)
        seq, _, _, _ = stream(detok, ids[:cut], output)
        assert seq.output_text == tokenizer.decode(output)


def test_stop_strings_wait_for_min_tokens(tokenizer):
    detok = Detokenizer(tokenizer)
    output = tokenizer.encode("ab ab ab ab ab ab", add_special_tokens=False)
    seq, _, found, step = stream(detok, [], output, SamplingParams(stop=["ab"], min_tokens=3))
    assert found == "ab" and step >= 3
    assert seq.output_text == tokenizer.decode(output[: step + 1])[: -2]


def test_fills_decoded_token_of_newest_logprobs(tokenizer):
    detok = Detokenizer(tokenizer)
    hello, world = tokenizer.encode(" hello", add_special_tokens=False)[0], tokenizer.eos_token_id
    seq = make_seq(tokenizer.encode("hi", add_special_tokens=False), SamplingParams(logprobs=1))
    seq.token_ids.append(hello)
    seq.logprobs = [{hello: Logprob(-0.1, 1), world: Logprob(-2.0, 2)}]
    detok.update(seq)
    entry = seq.logprobs[-1]
    assert entry[hello].decoded_token == tokenizer.decode([hello])
    assert entry[world].decoded_token == "<|endoftext|>"
