"""`TextTokenizer` (tokenizer.json through `tokenizers`, no transformers) gives the ids, text and
special tokens transformers' `AutoTokenizer` gives, on every tiny model tideflow ships, the
demo model, SmolLM2 and a Llama-2-style tokenizer; `JsonConfig` reads the numbers `AutoConfig`
reads; what it cannot load falls back to transformers with a log line."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from tideflow.models.text_tokenizer import (
    OWN_CLASS_MODEL_TYPES,
    TextTokenizer,
    load_text_tokenizer,
    text_tokenizer_problem,
)
from tideflow.testing.tiny_models import KINDS, MULTIMODAL_KINDS

DEMO_MODEL = str(Path(__file__).resolve().parents[2] / "tideflow" / "demo" / "demo_model")
SOURCES = [*KINDS, *MULTIMODAL_KINDS, "demo", "smollm2", "sentencepiece"]

TEXTS = [
    "Hello world",
    "  leading and trailing spaces  ",
    "special tokens inside: <s>a</s> <|im_start|>user<|im_end|> <image> <tool> <unk>",
    "émoji 🤖, 中文, combining é, tabs\tand\n\nnewlines\r\n",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 1234567890\n",
    "",
]


def _source_dir(request, tiny_model_dir) -> str:
    if request.param == "demo":
        return DEMO_MODEL
    if request.param in ("smollm2", "sentencepiece"):
        return request.getfixturevalue(f"{request.param}_dir")
    return tiny_model_dir(request.param)


@pytest.fixture(scope="module", params=SOURCES)
def model_dir(request, tiny_model_dir):
    return _source_dir(request, tiny_model_dir)


# transformers imposes its own Qwen2Tokenizer on model type qwen2, so the text stages hand it to
# transformers (asserted below); the rest are compared with AutoTokenizer
@pytest.fixture(scope="module", params=[s for s in SOURCES if s != "qwen2"])
def text_pair(request, tiny_model_dir):
    """(transformers' tokenizer, the TextTokenizer the text stages load) of one directory."""
    from transformers import AutoTokenizer

    path = _source_dir(request, tiny_model_dir)
    ours = load_text_tokenizer(path)
    assert isinstance(ours, TextTokenizer)
    return AutoTokenizer.from_pretrained(path), ours


@pytest.fixture(scope="module")
def pair(model_dir):
    """(transformers' tokenizer, what the text stages load) of one directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), load_text_tokenizer(model_dir)


def test_text_stages_load_a_text_tokenizer_unless_transformers_imposes_a_class(pair, model_dir):
    hf, ours = pair
    if Path(model_dir).name == "qwen2":  # transformers builds model type qwen2 with its Qwen2Tokenizer
        assert "'qwen2'" in text_tokenizer_problem(model_dir) and type(ours) is type(hf)
    else:
        assert isinstance(ours, TextTokenizer) and text_tokenizer_problem(model_dir) is None


def test_the_model_types_with_their_own_class_are_those_of_the_installed_transformers():
    from transformers.models.auto import tokenization_auto as auto

    generic = {"TokenizersBackend", "PythonBackend", "PreTrainedTokenizerFast", "MistralCommonBackend", ""}
    imposed = {t for t in auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS
               if (auto.TOKENIZER_MAPPING_NAMES.get(t) or "").removesuffix("Fast") not in generic}
    assert imposed == OWN_CLASS_MODEL_TYPES


def test_encode_and_batch_encode_equal_autotokenizer(text_pair):
    hf, ours = text_pair
    for text in TEXTS:
        for special in (True, False):
            assert ours.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special), text
    assert ours(TEXTS)["input_ids"] == hf(TEXTS)["input_ids"]
    assert ours.encode_batch(TEXTS, add_special_tokens=False) == hf(TEXTS, add_special_tokens=False)["input_ids"]


def test_decode_and_tokens_equal_autotokenizer(text_pair):
    hf, ours = text_pair
    ids = [i for i in range(0, len(hf), max(1, len(hf) // 300))] + hf.all_special_ids + hf.encode(TEXTS[3])
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
        assert ours.convert_ids_to_tokens(ids, skip_special_tokens=skip) == hf.convert_ids_to_tokens(ids, skip_special_tokens=skip)
    assert ours.decode(ids[5]) == hf.decode(ids[5]) and ours.convert_ids_to_tokens(ids[5]) == hf.convert_ids_to_tokens(ids[5])
    assert ours.batch_decode([ids[:7], ids[7:20]]) == hf.batch_decode([ids[:7], ids[7:20]])


def test_special_tokens_vocabulary_and_templates_equal_autotokenizer(text_pair):
    hf, ours = text_pair
    assert ours.special_tokens_map == hf.special_tokens_map
    assert ours.all_special_tokens == hf.all_special_tokens and ours.all_special_ids == hf.all_special_ids
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(ours, name) == getattr(hf, name), name
        assert getattr(ours, f"{name}_id") == getattr(hf, f"{name}_id"), name
    assert (len(ours), ours.vocab_size, ours.get_vocab()) == (len(hf), hf.vocab_size, hf.get_vocab())
    assert ours.chat_template == hf.chat_template
    assert ours.convert_tokens_to_ids(["<s>", "no-such-token-here"]) == hf.convert_tokens_to_ids(["<s>", "no-such-token-here"])


def test_a_llama_style_post_processor_adds_bos_and_legacy_files_are_read(sentencepiece_dir):
    ours = TextTokenizer.from_dir(sentencepiece_dir)
    assert ours.encode("Hello")[0] == ours.bos_token_id == 1 and ours.encode("Hello", add_special_tokens=False)[0] != 1
    assert ours.pad_token == "<unk>" and ours.extra_special_tokens == ["<tool>"]  # from special_tokens_map.json
    assert ours.encode("<tool>", add_special_tokens=False) == [ours.convert_tokens_to_ids("<tool>")]  # added as special
    assert set(ours.chat_template) == {"default", "tool_use"}


def test_config_json_gives_what_autoconfig_gives(model_dir):
    from transformers import AutoConfig

    from tideflow.models import model_max_len
    from tideflow.models.image_spec import ImagePromptSpec
    from tideflow.models.json_config import read_json_config

    ours, hf = read_json_config(model_dir), AutoConfig.from_pretrained(model_dir)
    assert ours.vocab_size == (getattr(hf, "vocab_size", None) or hf.get_text_config().vocab_size)
    assert model_max_len(ours) == model_max_len(hf)
    assert ImagePromptSpec.from_config(ours) == ImagePromptSpec.from_config(hf)
    assert read_json_config("org/hub-id") is None  # not a local directory: the caller asks transformers


def test_the_prompt_processor_loads_the_text_tokenizer(model_dir):
    from transformers import AutoConfig

    from tideflow.runtime.engine.prompt_processor import PromptProcessor

    prompts = PromptProcessor.load(model_dir)
    assert isinstance(prompts.tokenizer, TextTokenizer) or Path(model_dir).name == "qwen2"
    hf = AutoConfig.from_pretrained(model_dir)
    assert prompts.vocab_size == (getattr(hf, "vocab_size", None) or hf.get_text_config().vocab_size)


def _copy_tokenizer(src: str, dst: Path, **config_changes) -> str:
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(Path(src, name), dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config.update(config_changes)
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return str(dst)


def test_what_it_cannot_match_goes_to_transformers_with_a_log_line(tiny_model_dir, tmp_path, caplog):
    model = tiny_model_dir("llama")
    assert text_tokenizer_problem(model) is None
    assert text_tokenizer_problem("org/name") == "not a local directory"
    (tmp_path / "slow").mkdir()
    assert "no tokenizer.json" in text_tokenizer_problem(str(tmp_path / "slow"))
    remote = _copy_tokenizer(model, tmp_path / "remote", auto_map={"AutoTokenizer": ["x.T", None]})
    assert text_tokenizer_problem(remote) is None  # remote code only runs under trust_remote_code
    assert "remote code" in text_tokenizer_problem(remote, trust_remote_code=True)
    # a model-specific class: transformers 5 rebuilds it from the class's own pipeline
    specific = _copy_tokenizer(model, tmp_path / "gpt2", tokenizer_class="GPT2Tokenizer")
    assert "'GPT2Tokenizer'" in text_tokenizer_problem(specific)
    with caplog.at_level(logging.INFO, logger="tideflow.models.text_tokenizer"):
        tok = load_text_tokenizer(specific)
    assert not isinstance(tok, TextTokenizer) and type(tok).__name__ == "GPT2Tokenizer"
    assert "loading it with transformers" in caplog.text and "GPT2Tokenizer" in caplog.text
    assert isinstance(load_text_tokenizer(model), TextTokenizer)
    broken = _copy_tokenizer(model, tmp_path / "broken")
    Path(broken, "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="broken/tokenizer.json: cannot load it"):
        load_text_tokenizer(broken)


def test_chat_template_files_take_priority_over_the_config(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    model = _copy_tokenizer(tiny_model_dir("llama"), tmp_path / "m")
    Path(model, "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}|{% endfor %}")
    (Path(model) / "additional_chat_templates").mkdir()
    Path(model, "additional_chat_templates", "tool_use.jinja").write_text("TOOLS{{ tools | tojson }}")
    ours, hf = TextTokenizer.from_dir(model), AutoTokenizer.from_pretrained(model)
    assert ours.chat_template == hf.chat_template and set(ours.chat_template) == {"default", "tool_use"}
    chat = [{"role": "user", "content": "hi"}]
    for kwargs in ({}, {"tools": [{"type": "function", "function": {"name": "f"}}]}, {"chat_template": "tool_use"},
                   {"chat_template": "{{ messages | length }}"}):
        assert ours.apply_chat_template(chat, tokenize=False, **kwargs) == hf.apply_chat_template(chat, tokenize=False, **kwargs)
    Path(model, "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="none is 'default'"):
        TextTokenizer.from_dir(model).apply_chat_template(chat)
