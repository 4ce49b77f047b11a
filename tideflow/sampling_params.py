"""Per-request sampling parameters, shaped like vLLM's `SamplingParams`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_GREEDY_EPS = 1e-5  # temperatures below this decode greedily
MAX_LOGIT_BIAS = 100.0  # logit_bias values are clamped to [-100, 100], as OpenAI's range

# The keys of a generation_config.json that become a model's default sampling parameters (the
# ones vLLM takes; do_sample and the rest are ignored, as vLLM ignores them), and the
# SamplingParams field each one sets (HF's max_new_tokens is vLLM's max_tokens)
GENERATION_CONFIG_FIELDS = {
    "repetition_penalty": "repetition_penalty",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "max_new_tokens": "max_tokens",
}


STRUCTURED_KINDS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """A constraint on what a request may generate, as vLLM's `StructuredOutputsParams`: exactly
    one of `json` (a JSON schema, as a dict or its JSON text), `json_object` (any JSON object),
    `regex`, `choice` (one of these strings) or `grammar` (Lark, or GBNF/EBNF)."""

    json: str | Mapping[str, Any] | None = None
    json_object: bool | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None

    def __post_init__(self):
        if self.choice is not None and not isinstance(self.choice, tuple):
            if isinstance(self.choice, str):
                raise ValueError(f"structured_outputs.choice must be a list of strings, got {self.choice!r}")
            object.__setattr__(self, "choice", tuple(self.choice))
        set_kinds = [k for k in STRUCTURED_KINDS if getattr(self, k) not in (None, False)]
        if len(set_kinds) != 1:
            raise ValueError(f"structured_outputs must set exactly one of {list(STRUCTURED_KINDS)}, got {set_kinds or 'none'}")
        if self.json is not None and not isinstance(self.json, (str, Mapping)):
            raise ValueError(f"structured_outputs.json must be a JSON schema (an object or its text), got {self.json!r}")
        if self.json_object is not None and not isinstance(self.json_object, bool):
            raise ValueError(f"structured_outputs.json_object must be true or false, got {self.json_object!r}")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string, got {value!r}")
        if self.choice is not None and (not self.choice or any(not isinstance(c, str) for c in self.choice)):
            raise ValueError(f"structured_outputs.choice must hold at least one string, got {list(self.choice)!r}")

    @property
    def kind(self) -> str:
        """Which constraint this is: one of STRUCTURED_KINDS."""
        return next(k for k in STRUCTURED_KINDS if getattr(self, k) not in (None, False))

    def as_dict(self) -> dict[str, Any]:
        """{kind: value}, JSON-able (a choice as a list): vLLM's `structured_outputs` field, and
        what `StructuredOutputsParams(**d)` (or `SamplingParams(structured_outputs=d)`) takes back."""
        value = getattr(self, self.kind)
        return {self.kind: list(value) if isinstance(value, tuple) else value}


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops. Invalid values raise ValueError naming the field."""

    n: int = 1  # completions per prompt
    best_of: int | None = None  # completions sampled, the n with the highest cumulative logprob returned (None -> n)
    temperature: float = 1.0  # 0 -> greedy
    top_p: float = 1.0  # nucleus mass in (0, 1]
    top_k: int = 0  # 0 or -1 -> off
    min_p: float = 0.0  # drop tokens below min_p * p(top token)
    repetition_penalty: float = 1.0  # HF-style, over prompt and output tokens; 1 -> off
    presence_penalty: float = 0.0  # OpenAI-style, over output tokens
    frequency_penalty: float = 0.0  # OpenAI-style, over output tokens
    seed: int | None = None  # per-request RNG seed: same seed, same draws, whatever the batch
    max_tokens: int | None = 16  # None -> up to the context length
    min_tokens: int = 0  # EOS and stop tokens are suppressed before this many tokens
    stop: tuple[str, ...] = ()  # stop strings; the text is cut where the first one begins
    stop_token_ids: tuple[int, ...] = ()  # extra token ids that end the sequence
    ignore_eos: bool = False  # keep generating past EOS
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # number of top logprobs per generated token (0 -> the sampled one only)
    skip_special_tokens: bool = True
    prompt_logprobs: int | None = None  # top logprobs per prompt token, besides the token itself (None -> none)
    logit_bias: Mapping[int, float] | None = None  # token id -> added to its logit (clamped to [-100, 100])
    allowed_token_ids: tuple[int, ...] | None = None  # only these tokens may be sampled
    bad_words: tuple[str, ...] = ()  # words never generated: a word's last token is banned after its other tokens
    pooling: str | None = None  # "last" | "mean": the request's output carries the prompt's embedding
    structured_outputs: StructuredOutputsParams | None = None  # what the output must parse as (JSON schema, regex, ...)

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        if not isinstance(self.stop_token_ids, tuple):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        if self.allowed_token_ids is not None and not isinstance(self.allowed_token_ids, tuple):
            object.__setattr__(self, "allowed_token_ids", tuple(self.allowed_token_ids))
        if isinstance(self.bad_words, str):
            object.__setattr__(self, "bad_words", (self.bad_words,))
        elif not isinstance(self.bad_words, tuple):
            object.__setattr__(self, "bad_words", tuple(self.bad_words or ()))
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, Mapping):
                raise ValueError(f"logit_bias must map token ids to biases, got {self.logit_bias!r}")
            bias = {}
            for token, value in self.logit_bias.items():
                if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                    raise ValueError(f"logit_bias keys must be non-negative token ids, got {token!r}")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                    raise ValueError(f"logit_bias values must be numbers, got {value!r}")
                bias[token] = min(MAX_LOGIT_BIAS, max(-MAX_LOGIT_BIAS, float(value)))
            object.__setattr__(self, "logit_bias", bias or None)
        if isinstance(self.structured_outputs, Mapping):  # {"json": {...}} as vLLM's extra field sends it
            unknown = sorted(set(self.structured_outputs) - set(STRUCTURED_KINDS), key=str)
            if unknown:
                raise ValueError(f"structured_outputs: unknown key(s) {unknown}; known: {list(STRUCTURED_KINDS)}")
            object.__setattr__(self, "structured_outputs", StructuredOutputsParams(**self.structured_outputs))
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, rule: str):
            raise ValueError(f"{name} {rule}, got {getattr(self, name)!r}")

        if not isinstance(self.n, int) or self.n < 1:
            bad("n", "must be at least 1")
        if self.best_of is not None and (not isinstance(self.best_of, int) or self.best_of < self.n):
            bad("best_of", f"must be an integer >= n ({self.n})")
        if self.temperature < 0:
            bad("temperature", "must be non-negative")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            bad("top_k", "must be -1, 0 (off) or a positive integer")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", "must be in [0, 1]")
        if self.repetition_penalty <= 0:
            bad("repetition_penalty", "must be positive")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad("presence_penalty", "must be in [-2, 2]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad("frequency_penalty", "must be in [-2, 2]")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            bad("max_tokens", "must be at least 1")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            bad("min_tokens", "must be in [0, max_tokens]")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must hold non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "must hold non-negative token ids")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            bad("logprobs", "must be a non-negative integer")
        if self.prompt_logprobs is not None and (not isinstance(self.prompt_logprobs, int) or self.prompt_logprobs < 0):
            bad("prompt_logprobs", "must be a non-negative integer")
        if self.allowed_token_ids is not None and (
            not self.allowed_token_ids or any(not isinstance(t, int) or t < 0 for t in self.allowed_token_ids)
        ):
            bad("allowed_token_ids", "must hold at least one non-negative token id")
        if any(not isinstance(w, str) or not w.strip() for w in self.bad_words):
            bad("bad_words", "must hold non-empty strings")
        if self.pooling not in (None, "last", "mean"):
            bad("pooling", "must be 'last' or 'mean'")
        if self.seed is not None and not isinstance(self.seed, int):
            bad("seed", "must be an integer")
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            bad("structured_outputs", "must be a StructuredOutputsParams")

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    @property
    def ranks_completions(self) -> bool:
        """Whether more completions are sampled than returned (best_of > n)."""
        return self.best_of is not None and self.best_of > self.n

    def sampled_params(self) -> "SamplingParams":
        """What an engine runs for these params: with best_of > n, best_of completions that each
        keep their sampled tokens' logprobs (their ranking; `outputs.best_completions` picks
        the n and drops what was not asked for); else these params."""
        if not self.ranks_completions:
            return self
        return self.replace(n=self.best_of, best_of=None, logprobs=0 if self.logprobs is None else self.logprobs)

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)


def generation_config_defaults(config: Mapping[str, Any], where: str, *, strict: bool = False) -> dict[str, Any]:
    """The SamplingParams fields a generation config sets: its `GENERATION_CONFIG_FIELDS` keys
    whose values are not null, as field -> value, checked by SamplingParams' rules. `strict`
    makes any other key an error (an override names only these). ValueError names `where` and
    the generation-config key."""
    keys = {name: key for key, name in GENERATION_CONFIG_FIELDS.items()}
    if strict:
        unknown = sorted(set(config) - set(GENERATION_CONFIG_FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(GENERATION_CONFIG_FIELDS)}")
    fields = {GENERATION_CONFIG_FIELDS[k]: v for k, v in config.items() if k in GENERATION_CONFIG_FIELDS and v is not None}
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: {keys[name]} must be a number, got {value!r}")
    try:
        SamplingParams(**fields)
    except ValueError as exc:  # "max_tokens must be at least 1, got 0": name the file's key
        name, rule = str(exc).split(" ", 1)
        raise ValueError(f"{where}: {keys.get(name, name)} {rule}") from None
    return fields
