"""A model's tokenizer without torch or transformers: `tokenizer.json` through the `tokenizers`
library, the chat template through jinja2 (`tideflow.models.chat_template`).

The text-only processes (the tokenizer and detokenizer stages, the server's ingress, batch
prompt actors) only encode, decode and render chats, so they load a `TextTokenizer` and start
without importing torch. It reads the files transformers reads and sets the backend up the way
transformers' `TokenizersBackend` does, so ids and text match `AutoTokenizer`'s:

- `tokenizer.json` as written (its normalizer, pre-tokenizer, post-processor: a Llama-style
  tokenizer adds BOS there), with truncation and padding off;
- `tokenizer_config.json`: the named special tokens (`bos_token`, ..., and model-specific
  ones such as `image_token`; strings or AddedToken dicts), `extra_special_tokens` (or the
  older `additional_special_tokens`), `added_tokens_decoder`, `clean_up_tokenization_spaces`
  and `chat_template` (one string, or a list of named templates). Special tokens the backend
  does not know yet are added to it as special tokens. `add_bos_token` / `add_eos_token` are
  ignored, as transformers ignores them when a tokenizer.json exists;
- `special_tokens_map.json` when the config has no `added_tokens_decoder` (older checkpoints);
- `chat_template.jinja` and `additional_chat_templates/*.jinja`, which take priority over
  the config's template (transformers 5 saves templates there).

It answers the part of the transformers tokenizer API tideflow uses (`encode`, calling it on a
list of texts, `decode`, `convert_ids_to_tokens`, `apply_chat_template`, the special tokens
and their ids, `backend_tokenizer`). `load_text_tokenizer` falls back to transformers, with a
log line, where this would not match `AutoTokenizer`: a hub id, a directory without
tokenizer.json (a slow-only tokenizer), remote tokenizer code under trust_remote_code, or a
tokenizer class of one model family (LlamaTokenizer, Qwen2Tokenizer, ...; declared, or imposed
by the model type as transformers does for qwen2), which transformers 5 rebuilds from the
class's own pipeline and defaults instead of taking tokenizer.json as it is.
Llama-3-style checkpoints, GGUF conversions and tideflow's test and demo models declare the
generic class.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from tideflow.models import chat_template as templates
from tideflow.models.json_config import read_json_object

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"

# The tokenizer classes transformers 5 loads from tokenizer.json as written (its own backend
# class, and the v4 name of it); other classes rebuild the pipeline from their own definition.
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
# Model types (config.json `model_type`) whose tokenizer transformers 5 builds with its own
# class whatever class the checkpoint declares (its MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS
# entries that map to a model-specific class; tests/models/test_text_tokenizer.py checks this
# against the installed transformers).
OWN_CLASS_MODEL_TYPES = frozenset({
    "hyperclovax_vision_v2", "qwen2", "qwen3_5", "qwen3_5_moe", "qwen3_5_moe_text", "qwen4_exp", "siglip2",
})
# The named special tokens every tokenizer may have, in transformers' order.
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_ADDED_TOKEN_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
# transformers' clean-up of decoded text (WordPiece artefacts); never applied to BPE models.
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class TextTokenizer:
    """A fast tokenizer and its chat template(s), loaded from a model directory."""

    def __init__(self, backend, *, special_tokens: dict[str, str] | None = None, extra_special_tokens=(),
                 chat_template: str | dict[str, str] | None = None, clean_up_tokenization_spaces: bool = False,
                 model_max_length: int | None = None, name_or_path: str = ""):
        self._backend = backend  # a tokenizers.Tokenizer, set up by `from_dir`
        # name -> token text of the named special tokens (bos_token, ..., image_token); no None values
        self.special_tokens_map = dict(special_tokens or {})
        self.extra_special_tokens = [str(t) for t in extra_special_tokens]
        self.chat_template = chat_template  # one template, or name -> template
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.model_max_length = model_max_length
        self.name_or_path = name_or_path

    @classmethod
    def from_dir(cls, path: str) -> TextTokenizer:
        """The tokenizer of a model directory holding tokenizer.json (and usually
        tokenizer_config.json). ValueError naming the file when one is malformed."""
        from tokenizers import Tokenizer

        path = os.path.expanduser(path)
        try:
            backend = Tokenizer.from_file(os.path.join(path, TOKENIZER_FILE))
        except Exception as exc:  # noqa: BLE001 (the Rust loader raises a bare Exception)
            raise ValueError(f"{os.path.join(path, TOKENIZER_FILE)}: cannot load it ({exc})") from None
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = False
        config = read_json_object(os.path.join(path, TOKENIZER_CONFIG_FILE)) or {}
        specials = _SpecialTokens.from_config(config, read_json_object(os.path.join(path, SPECIAL_TOKENS_MAP_FILE)))
        specials.add_missing_to(backend)
        max_len = config.get("model_max_length")
        return cls(
            backend,
            special_tokens={name: str(token) for name, token in sorted(specials.named.items(), key=_named_order)},
            extra_special_tokens=specials.extra,
            chat_template=_chat_templates(path, config),
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
            model_max_length=max_len if isinstance(max_len, int) else None,
            name_or_path=path,
        )

    # -- the backend and the vocabulary ----------------------------------------------------------
    @property
    def backend_tokenizer(self):
        """The `tokenizers.Tokenizer` (the incremental detokenizer decodes with it directly)."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """The base vocabulary, without added tokens (transformers' `vocab_size`)."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    # -- special tokens ---------------------------------------------------------------------------
    def _token(self, name: str) -> str | None:
        return self.special_tokens_map.get(name)

    bos_token = property(lambda self: self._token("bos_token"))
    eos_token = property(lambda self: self._token("eos_token"))
    unk_token = property(lambda self: self._token("unk_token"))
    pad_token = property(lambda self: self._token("pad_token"))
    bos_token_id = property(lambda self: self._token_id("bos_token"))
    eos_token_id = property(lambda self: self._token_id("eos_token"))
    unk_token_id = property(lambda self: self._token_id("unk_token"))
    pad_token_id = property(lambda self: self._token_id("pad_token"))

    def _token_id(self, name: str) -> int | None:
        token = self._token(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    @property
    def all_special_tokens(self) -> list[str]:
        """The named special tokens, then the extra ones, each once."""
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self.extra_special_tokens]))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        """A token's id (the unknown token's id for one not in the vocabulary), or a list's."""
        if isinstance(tokens, str):
            found = self._backend.token_to_id(tokens)
            if found is None and self.unk_token is not None:
                found = self._backend.token_to_id(self.unk_token)
            return found
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False):
        """One id's token, or the tokens of a list of ids (special ones left out on request)."""
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(int(i)) for i in ids if int(i) not in skip]

    # -- encoding and decoding --------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of one text; `add_special_tokens` applies the tokenizer.json post-processor
        (a Llama-style BOS), as transformers' `encode` does."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """The ids of many texts, encoded in one Rust call."""
        return [e.ids for e in self._backend.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens)]

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = True) -> dict[str, Any]:
        """`{"input_ids": ...}` for one text or a list of them, as a transformers tokenizer's
        call returns it (without attention masks)."""
        if isinstance(texts, str):
            return {"input_ids": self.encode(texts, add_special_tokens)}
        return {"input_ids": self.encode_batch(texts, add_special_tokens)}

    def decode(self, ids: int | Sequence[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """The text of some ids (transformers' clean-up when asked or configured, except for BPE
        models, which it would corrupt)."""
        text = self._backend.decode([ids] if isinstance(ids, int) else list(ids), skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        if clean and type(self._backend.model).__name__ != "BPE":
            for old, new in _CLEAN_UP:
                text = text.replace(old, new)
        return text

    def batch_decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    # -- chats ------------------------------------------------------------------------------------
    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        """The template text `apply_chat_template` renders (see `chat_template.pick_template`)."""
        return templates.pick_template(self.chat_template, chat_template, tools)

    def apply_chat_template(self, conversation: list[dict], tools: list[dict] | None = None,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            add_generation_prompt: bool = False, tokenize: bool = True, **kwargs) -> str | list[int]:
        """One conversation through the chat template, as transformers renders it: the text
        (`tokenize=False`) or its ids, encoded without added special tokens (the template
        writes them). `kwargs` are further template variables. A failing template is a
        ValueError (`chat_template.ChatTemplateError`)."""
        template = self.get_chat_template(chat_template, tools)
        variables = {**self.special_tokens_map, **kwargs}
        text = templates.render(template, conversation, tools=tools, documents=documents,
                                add_generation_prompt=add_generation_prompt, variables=variables)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name_or_path!r}, vocab={len(self)})"


class _SpecialTokens:
    """The special tokens a tokenizer config names, and the added tokens it lists."""

    def __init__(self):
        self.named: dict[str, Any] = {}  # name -> token text or AddedToken
        self.extra: list[Any] = []  # extra special tokens (text or AddedToken)
        self.added: dict[int, Any] = {}  # the config's added_tokens_decoder: id -> AddedToken

    @classmethod
    def from_config(cls, config: dict, special_tokens_map: dict | None) -> _SpecialTokens:
        out = cls()
        for key, value in config.items():
            token = _token_value(value)
            if token is not None and (key in NAMED_SPECIAL_TOKENS or key.endswith("_token")):
                out.named[key] = token
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens")
        out._add_extra(extra, special=None)
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            for index, token in decoder.items():
                out.added[int(index)] = _added_token(token)
        elif special_tokens_map:  # legacy checkpoints: the map overrides the config
            for key, value in special_tokens_map.items():
                if key in ("extra_special_tokens", "additional_special_tokens"):
                    if key == "extra_special_tokens" or not out.extra:
                        out._add_extra(value, special=True)
                    continue
                token = _token_value(value, special=True)
                if token is not None:
                    out.named[key] = token
        by_text = {str(t): t for t in out.added.values()}
        for key, token in out.named.items():  # a named token takes the config's added token of its text
            out.named[key] = by_text.get(str(token), token)
        return out

    def _add_extra(self, value, special: bool | None) -> None:
        if isinstance(value, dict):  # name -> token: more named special tokens
            for key, token in value.items():
                token = _token_value(token)
                if token is not None:
                    self.named[key] = token
        elif isinstance(value, (list, tuple)):
            for token in value:
                token = _token_value(token, special)
                if token is not None and str(token) not in {str(t) for t in self.extra}:
                    self.extra.append(token)

    def add_missing_to(self, backend) -> None:
        """Add to `backend` the config's added tokens and the special tokens it lacks, as
        transformers does on loading (a named special token is always marked special)."""
        from tokenizers import AddedToken

        known = {t.content for t in backend.get_added_tokens_decoder().values()}
        pending = [token for _, token in sorted(self.added.items())]
        known |= {t.content for t in pending}
        named_texts = {str(t) for t in self.named.values()}
        for token in [*self.named.values(), *self.extra]:
            if str(token) not in known:
                known.add(str(token))
                pending.append(token)
        tokens = []
        for token in pending:
            if isinstance(token, str):
                token = AddedToken(token, special=True)
            elif not token.special and token.content in named_texts:
                token.special = True
            tokens.append(token)
        if tokens:
            backend.add_tokens(tokens)


def _named_order(item: tuple[str, Any]) -> int:
    """The standard named tokens first, in transformers' order, then model-specific ones."""
    name = item[0]
    return NAMED_SPECIAL_TOKENS.index(name) if name in NAMED_SPECIAL_TOKENS else len(NAMED_SPECIAL_TOKENS)


def _token_value(value, special: bool | None = None):
    """A config's token entry (text, or an AddedToken dict) as text or an AddedToken; None for
    anything else (booleans such as add_bos_token, nulls)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return _added_token(value, special)
    return None


def _added_token(entry: dict, special: bool | None = None):
    from tokenizers import AddedToken

    fields = {k: entry[k] for k in _ADDED_TOKEN_FIELDS if k in entry}
    if special is not None:
        fields["special"] = special
    return AddedToken(**fields)


def _chat_templates(path: str, config: dict) -> str | dict[str, str] | None:
    """The directory's chat template(s): the .jinja files when there are any (chat_template.jinja
    is "default", additional_chat_templates/<name>.jinja are named), else the config's entry
    (a string, or a list of {"name", "template"})."""
    found: dict[str, str] = {}
    default = os.path.join(path, CHAT_TEMPLATE_FILE)
    if os.path.isfile(default):
        found["default"] = _read_text(default)
    extra_dir = os.path.join(path, CHAT_TEMPLATE_DIR)
    if os.path.isdir(extra_dir):
        for name in sorted(os.listdir(extra_dir)):
            if name.endswith(".jinja"):
                found[name.removesuffix(".jinja")] = _read_text(os.path.join(extra_dir, name))
    if found:
        return found["default"] if list(found) == ["default"] else found
    value = config.get("chat_template")
    if isinstance(value, (list, tuple)):
        return {t["name"]: t["template"] for t in value}
    return value if isinstance(value, (str, dict)) else None


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def text_tokenizer_problem(path_or_id: str, trust_remote_code: bool = False) -> str | None:
    """Why `TextTokenizer` cannot stand in for `AutoTokenizer` on `path_or_id` (transformers
    must load it), or None when it can: a local directory with tokenizer.json whose config
    declares a generic tokenizer class, which transformers also loads from tokenizer.json as
    written. A model-specific class (LlamaTokenizer, Qwen2Tokenizer, ...), declared or imposed
    by the model type (`OWN_CLASS_MODEL_TYPES`), is rebuilt by transformers 5 from its own
    pipeline and defaults, which may differ from tokenizer.json."""
    path = os.path.expanduser(path_or_id)
    if not os.path.isdir(path):
        return "not a local directory"
    if not os.path.isfile(os.path.join(path, TOKENIZER_FILE)):
        return f"no {TOKENIZER_FILE} (a slow-only tokenizer)"
    config = read_json_object(os.path.join(path, TOKENIZER_CONFIG_FILE)) or {}
    auto_map = config.get("auto_map")
    if trust_remote_code and ((isinstance(auto_map, dict) and "AutoTokenizer" in auto_map)
                              or isinstance(auto_map, (list, tuple))):
        return "its tokenizer is remote code (trust_remote_code)"
    model_config = read_json_object(os.path.join(path, "config.json")) or {}
    declared = config.get("tokenizer_class") or model_config.get("tokenizer_class")
    if declared not in GENERIC_TOKENIZER_CLASSES:
        return (f"tokenizer class {declared!r} is not one transformers loads from {TOKENIZER_FILE} as written "
                f"({', '.join(GENERIC_TOKENIZER_CLASSES)})")
    model_type = model_config.get("model_type")
    if model_type in OWN_CLASS_MODEL_TYPES:
        return f"transformers gives model type {model_type!r} its own tokenizer class"
    if os.path.isfile(os.path.join(path, "tekken.json")):
        return "a Mistral tekken.json (transformers may load it with mistral-common)"
    return None


def load_text_tokenizer(path_or_id: str, trust_remote_code: bool = False):
    """A `TextTokenizer` for a model directory, else (see `text_tokenizer_problem`) the
    transformers tokenizer, with a log line saying why."""
    problem = text_tokenizer_problem(path_or_id, trust_remote_code)
    if problem is None:
        return TextTokenizer.from_dir(path_or_id)
    from tideflow.models.loader import load_tokenizer

    logger.info("tokenizer of %s: %s; loading it with transformers", path_or_id, problem)
    return load_tokenizer(path_or_id, trust_remote_code)
