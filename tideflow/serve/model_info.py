"""`ModelInfo`: what the server needs to know about the model to validate requests before
they reach the graph (vocabulary size, context length, the tokenizer), the defaults of the
sampling fields a request leaves unset (the model's generation config), and to render tokens.

Its `PromptProcessor` reads the same config.json and tokenizer the graph's stages load, so a
prompt the server admits is one the engine accepts, and the server tokenizes each prompt once:
the graph gets token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tideflow.models.generation_defaults import GenerationDefaults, load_generation_defaults
from tideflow.runtime.engine.prompt_processor import PromptProcessor


@dataclass(frozen=True)
class ModelInfo:
    name: str  # the served model name
    path: str  # model directory (or hub id)
    prompts: PromptProcessor  # the prompt front door: tokenizer, chat template, vocabulary and context checks
    created: int  # unix time the server started (the `created` of /v1/models)
    # the defaults of sampling fields a request leaves unset (tideflow.models.generation_defaults)
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    _texts: dict = field(default_factory=dict, compare=False, repr=False)  # token id -> its text

    @classmethod
    def load(cls, name: str, path: str, *, tokenizer: str | None = None, max_model_len: int | None = None,
             trust_remote_code: bool = False, chat_template: str | None = None, generation_config: str = "auto",
             override_generation_config=()) -> ModelInfo:
        """`generation_config` and `override_generation_config` as the engine options take them."""
        import time

        prompts = PromptProcessor.load(path, tokenizer=tokenizer, max_model_len=max_model_len,
                                       trust_remote_code=trust_remote_code, chat_template=chat_template)
        generation = load_generation_defaults(path, generation_config, override_generation_config)
        return cls(name=name, path=path, prompts=prompts, created=int(time.time()), generation=generation)

    @property
    def tokenizer(self) -> Any:
        return self.prompts.tokenizer

    @property
    def vocab_size(self) -> int:  # token ids must be in [0, vocab_size)
        return self.prompts.vocab_size

    @property
    def max_model_len(self) -> int:  # prompt + generated tokens
        return self.prompts.max_model_len

    @property
    def image_token(self) -> str | None:  # a multimodal model's image placeholder; None: text only
        return self.prompts.image_token

    @property
    def tokens_per_image(self) -> int:  # prompt tokens each image expands to
        spec = self.prompts.image_spec
        return spec.tokens_per_image if spec is not None else 0

    @cached_property
    def max_token_bytes(self) -> int:
        """At least the UTF-8 bytes any one token stands for: the longest vocabulary entry's
        UTF-8 size. An entry is never shorter than its text (a byte-level entry spends 1 or 2
        bytes per byte, sentencepiece's "▁" 3 for a space, "<0x0A>" 6 for one byte), so text
        longer than max_model_len times this cannot fit whatever it says. SmolLM2's is 162 (a
        newline and 80 spaces), so a fixed guess such as 64 would refuse text that fits."""
        vocab = getattr(self.tokenizer, "get_vocab", None)
        if vocab is None:  # a custom tokenizer without one: a bound no vocabulary we know comes near
            return 1024
        return max((len(t.encode("utf-8", "surrogatepass")) for t in vocab()), default=1)

    def encode(self, text: str) -> list[int]:
        """Token ids of a completion prompt."""
        return self.prompts.encode_text(text)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation after the chat template."""
        return self.prompts.encode_chat(messages)[1]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_text(self, token_id: int) -> str:
        """One token's text, for logprobs (cached: the vocabulary is small next to the traffic)."""
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text
