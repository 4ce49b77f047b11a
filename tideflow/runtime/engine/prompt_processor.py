"""The prompt front door: every way a prompt comes in, made into token ids once.

`LLM.generate` / `LLM.chat`, the server, batch jobs and the graphs' tokenizer stage all take
prompts as text, token ids or chat conversations (plus images for a multimodal model). They
all hand them to a `PromptProcessor`, so a prompt is normalised, templated and tokenized the
same way everywhere, and only once: the server sends the graph token ids, which the tokenizer
stage passes through. Errors are ValueErrors naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

from tideflow.config import ModelConfig
from tideflow.models.image_spec import IMAGE_FIELD, ImagePromptSpec
from tideflow.runtime.engine.core.sequence import check_prompt_ids
from tideflow.sampling_params import SamplingParams

# "text" | {"prompt": "text"} | {"prompt_token_ids": [...]} | {"messages": [{"role", "content"}, ...]};
# a dict may add "multi_modal_data": {"image": [PIL images or encoded bytes]}; one with "messages"
# may add "tools": [{"type": "function", "function": {...}}] (the template's `tools`)
PromptType = str | dict[str, Any]


@dataclass(slots=True)
class Prompt:
    """One prompt, ready for an engine."""

    text: str | None  # its text (a conversation's after the chat template); None when only ids were given
    token_ids: list[int]  # what the engine runs (image placeholders not yet expanded)
    images: list | None  # image i -> a PIL image or encoded bytes; None without images


def normalize(prompts: PromptType | Seq[PromptType], sampling_params) -> tuple[list[PromptType], list[SamplingParams]]:
    """Prompts as a list and one SamplingParams per prompt (ValueError naming the field otherwise)."""
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    prompts = list(prompts)
    if sampling_params is None:
        params = [SamplingParams()] * len(prompts)
    elif isinstance(sampling_params, SamplingParams):
        params = [sampling_params] * len(prompts)
    else:
        params = list(sampling_params)
        if len(params) != len(prompts):
            raise ValueError(f"sampling_params: got {len(params)} for {len(prompts)} prompts")
    return prompts, params


def prompt_images(prompt: PromptType) -> list | None:
    """The images of a prompt (`{"multi_modal_data": {"image": [...]}}`), or None."""
    data = prompt.get(IMAGE_FIELD) if isinstance(prompt, dict) else None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{IMAGE_FIELD}: expected a dict such as {{'image': [...]}}, got {type(data).__name__}")
    unknown = sorted(set(data) - {"image"})
    if unknown:
        raise ValueError(f"{IMAGE_FIELD}: only 'image' is supported, got {unknown}")
    return data.get("image")


class PromptProcessor:
    """Turns prompts into token ids with one tokenizer and chat template, and checks them
    against the model's vocabulary and context length."""

    def __init__(self, tokenizer: Any, vocab_size: int, max_model_len: int, image_spec: ImagePromptSpec | None = None,
                 chat_template: str | None = None):
        self.tokenizer = tokenizer  # a TextTokenizer, or a transformers tokenizer (LLM: the engine's)
        self.chat_template = chat_template  # replaces the tokenizer's template; None: the tokenizer's own
        self.vocab_size = vocab_size  # token ids must be in [0, vocab_size)
        self.max_model_len = max_model_len  # prompt + generated tokens
        self.image_spec = image_spec  # None: a text-only model

    @classmethod
    def for_model(cls, config: ModelConfig) -> PromptProcessor:
        """A processor for what a stage's (or the server's) `ModelConfig` loads."""
        return cls.load(config.model, tokenizer=config.tokenizer, max_model_len=config.max_model_len,
                        trust_remote_code=config.trust_remote_code, chat_template=config.chat_template)

    @classmethod
    def load(cls, model: str, *, tokenizer: str | None = None, max_model_len: int | None = None,
             trust_remote_code: bool = False, chat_template: str | None = None) -> PromptProcessor:
        """A processor for a model directory: its config and tokenizer, nothing of its weights.
        config.json is read with `json` and the tokenizer is a `TextTokenizer` (tokenizers and
        jinja2), so a text-only process never imports torch or transformers. A hub id goes
        through transformers, and so does a tokenizer on which `TextTokenizer` would differ
        from `AutoTokenizer` (see `tideflow.models.text_tokenizer.text_tokenizer_problem`)."""
        from tideflow.models import model_max_len
        from tideflow.models.json_config import read_json_config
        from tideflow.models.text_tokenizer import load_text_tokenizer

        config = read_json_config(model)
        if config is None or config.vocab_size is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
            vocab = getattr(config, "vocab_size", None) or config.get_text_config().vocab_size
        else:
            vocab = config.vocab_size
        return cls(
            load_text_tokenizer(tokenizer or model, trust_remote_code),
            int(vocab),
            int(max_model_len or model_max_len(config)),
            ImagePromptSpec.from_config(config),
            chat_template,
        )

    # -- text and conversations ---------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """A completion prompt's ids (with the tokenizer's special tokens, as HF encodes it)."""
        return self.tokenizer.encode(text)

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Many completion prompts' ids in one call (a fast tokenizer encodes them in Rust)."""
        return [list(ids) for ids in self.tokenizer(texts)["input_ids"]]

    def render_chat(self, messages: list[dict], *, add_generation_prompt: bool = True,
                    chat_template: str | None = None, tools: list[dict] | None = None) -> str:
        """A conversation as text, through the given chat template, else this processor's, else
        the tokenizer's; `tools` become the template's `tools` (function schemas in OpenAI's
        shape). A template that fails (its `raise_exception` included) is a ValueError."""
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                chat_template=chat_template if chat_template is not None else self.chat_template, tools=tools,
            )
        except TemplateError as exc:  # a transformers tokenizer's template failed
            raise ValueError(f"chat template: {exc}") from exc

    def encode_chat(self, messages: list[dict], *, add_generation_prompt: bool = True,
                    chat_template: str | None = None, tools: list[dict] | None = None) -> tuple[str, list[int]]:
        """A conversation's templated text and its ids (the template holds the special tokens)."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt, chat_template=chat_template,
                                tools=tools)
        return text, self.tokenizer.encode(text, add_special_tokens=False)

    def process(self, prompt: PromptType) -> Prompt:
        """Any accepted prompt form as a `Prompt`. Token ids given are taken as they are (the
        engine checks them); text is tokenized; a conversation is templated, then tokenized."""
        images = prompt_images(prompt)
        if isinstance(prompt, str):
            return Prompt(prompt, self._encode_nonempty(prompt), images)
        if isinstance(prompt, dict):
            if prompt.get("prompt_token_ids") is not None:
                return Prompt(prompt.get("prompt"), list(prompt["prompt_token_ids"]), images)
            if prompt.get("messages") is not None:
                text, ids = self.encode_chat(prompt["messages"], tools=prompt.get("tools"))
                return Prompt(text, ids, images)
            if prompt.get("prompt") is not None:
                return Prompt(prompt["prompt"], self._encode_nonempty(prompt["prompt"]), images)
            raise ValueError("prompt: a dict prompt needs 'prompt', 'prompt_token_ids' or 'messages'")
        raise ValueError(
            f"prompt: expected a string or a dict with 'prompt', 'prompt_token_ids' or 'messages', "
            f"got {type(prompt).__name__}"
        )

    def _encode_nonempty(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"prompt: expected a string, got {type(text).__name__}")
        if not text:
            raise ValueError("prompt: the prompt is empty")
        return self.encode_text(text)

    # -- checks -------------------------------------------------------------------------------
    def check_token_ids(self, ids) -> list[int]:
        """The ids as a list, or ValueError naming `prompt_token_ids`: empty, not integers,
        outside the vocabulary, or too long to generate one token."""
        return check_prompt_ids(ids, self.vocab_size, self.max_model_len)

    def num_tokens(self, ids: list[int], num_images: int = 0) -> int:
        """Prompt tokens once each image placeholder has expanded to its feature rows."""
        per_image = self.image_spec.tokens_per_image if self.image_spec is not None else 1
        return len(ids) + num_images * (per_image - 1)

    @property
    def image_token(self) -> str | None:
        """The image placeholder as text (None for a text-only model)."""
        if self.image_spec is None:
            return None
        return self.tokenizer.convert_ids_to_tokens(self.image_spec.image_token_id)
