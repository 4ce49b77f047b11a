"""What generates inside a batch actor: an in-process `LLM`, or a deployed graph.

Both answer the same three questions: the tokenizer (prompts are tokenized in the actor),
whether one row's prompt can run (`check`, an error message or None) and `generate` over the
rows that can, outputs in row order.
"""

from __future__ import annotations

from typing import Protocol

from tideflow.outputs import RequestOutput
from tideflow.sampling_params import SamplingParams


class Backend(Protocol):
    tokenizer: object

    def check(self, token_ids: list[int], params: SamplingParams) -> str | None:
        """Why this prompt can never run (an error message naming the field), or None."""

    def generate(self, prompts: list[dict], params: list[SamplingParams]) -> list[RequestOutput]:
        """Run prompts (`{"prompt", "prompt_token_ids"}` dicts) that passed `check`; outputs in order."""

    def close(self) -> None:
        """Release what the backend holds."""


class EngineBackend:
    """An in-process engine owned by this actor, stepped by an `EngineLoop` so that the actor's
    concurrent calls share its continuous batching."""

    def __init__(self, model: str, engine_options: dict):
        from tideflow.batch.engine_loop import EngineLoop
        from tideflow.llm import LLM

        self.llm = LLM(model, **engine_options)
        self.tokenizer = self.llm.get_tokenizer()
        self.loop = EngineLoop(self.llm.engine)

    def check(self, token_ids: list[int], params: SamplingParams) -> str | None:
        engine = self.llm.engine
        try:
            ids = engine._check_prompt(token_ids)  # vocabulary and context length
            engine.new_sequence("check", 0, ids, params)  # raises when prompt + max_tokens cannot fit the KV cache
        except ValueError as exc:
            return str(exc)
        return None

    def generate(self, prompts: list[dict], params: list[SamplingParams]) -> list[RequestOutput]:
        return self.loop.generate(prompts, params)

    def close(self) -> None:
        self.llm = None


class GraphBackend:
    """A graph deployed by the driver; this actor sends it rows through its handle.

    Request ids are made unique per actor (every actor holds a copy of the same handle), and
    prompts are checked against the model's vocabulary and context length here, so that one
    bad row does not fail its whole batch inside the graph."""

    def __init__(self, handle, model: str, engine_options: dict):
        import itertools
        import uuid

        from transformers import AutoConfig

        from tideflow.models.loader import load_tokenizer, model_max_len

        self.handle = handle
        prefix = f"{handle.graph.name}-batch-{uuid.uuid4().hex[:8]}"
        counter = itertools.count()
        handle._new_ids = lambda count: [f"{prefix}-{next(counter)}" for _ in range(count)]
        self.tokenizer = load_tokenizer(engine_options.get("tokenizer") or model)
        config = AutoConfig.from_pretrained(model)
        self.vocab_size = config.get_text_config().vocab_size
        self.max_model_len = engine_options.get("max_model_len") or model_max_len(config)

    def check(self, token_ids: list[int], params: SamplingParams) -> str | None:
        if not token_ids:
            return "prompt_token_ids: the prompt is empty"
        lo, hi = min(token_ids), max(token_ids)
        if lo < 0 or hi >= self.vocab_size:
            return f"prompt_token_ids: token id {lo if lo < 0 else hi} is outside the vocabulary [0, {self.vocab_size})"
        if len(token_ids) >= self.max_model_len:
            return (f"prompt_token_ids: the prompt has {len(token_ids)} tokens; the context length is "
                    f"{self.max_model_len} and at least one token must be generated")
        return None

    def generate(self, prompts: list[dict], params: list[SamplingParams]) -> list[RequestOutput]:
        return self.handle.generate(prompts, params)

    def close(self) -> None:
        self.handle = None
