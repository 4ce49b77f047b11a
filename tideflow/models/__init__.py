"""Loading Hugging Face models and tokenizers.

`torch` and `transformers` are imported lazily, inside the loader's functions. The text-only
processes load `text_tokenizer.TextTokenizer`, `chat_template` and `json_config` instead,
which never import either.
Tiny random checkpoints for tests live in `tideflow.testing.tiny_models`.
"""

from tideflow.models.loader import (
    eos_token_ids,
    load_model,
    load_tokenizer,
    model_max_len,
    resolve_dtype,
)

__all__ = ["load_model", "load_tokenizer", "resolve_dtype", "model_max_len", "eos_token_ids"]
