"""`ModelInfo`: what the server needs to know about the model to validate requests before
they reach the graph (vocabulary size, context length, the tokenizer) and to render tokens.

It reads the same config.json and tokenizer the graph's stages load, so a prompt the server
admits is one the engine accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    name: str  # the served model name
    path: str  # model directory (or hub id)
    vocab_size: int  # token ids must be in [0, vocab_size)
    max_model_len: int  # prompt + generated tokens
    tokenizer: Any  # a transformers tokenizer
    created: int  # unix time the server started (the `created` of /v1/models)
    image_token: str | None = None  # the image placeholder of a multimodal model's prompts; None: text only
    tokens_per_image: int = 0  # prompt tokens each image expands to
    _texts: dict = field(default_factory=dict, compare=False, repr=False)  # token id -> its text

    @classmethod
    def load(cls, name: str, path: str, *, tokenizer: str | None = None, max_model_len: int | None = None,
             trust_remote_code: bool = False) -> ModelInfo:
        import time

        from transformers import AutoConfig

        from tideflow.models import load_tokenizer, model_max_len

        from tideflow.models.image_spec import ImagePromptSpec

        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        vocab = getattr(hf_config, "vocab_size", None) or hf_config.get_text_config().vocab_size
        tok = load_tokenizer(tokenizer or path, trust_remote_code)
        spec = ImagePromptSpec.from_config(hf_config)
        return cls(
            name=name,
            path=path,
            vocab_size=int(vocab),
            max_model_len=int(max_model_len or model_max_len(hf_config)),
            tokenizer=tok,
            created=int(time.time()),
            image_token=tok.convert_ids_to_tokens(spec.image_token_id) if spec is not None else None,
            tokens_per_image=spec.tokens_per_image if spec is not None else 0,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of a completion prompt, as the graph's tokenizer stage encodes it."""
        return self.tokenizer.encode(text)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation after the chat template (as the tokenizer stage does)."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_text(self, token_id: int) -> str:
        """One token's text, for logprobs (cached: the vocabulary is small next to the traffic)."""
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text
