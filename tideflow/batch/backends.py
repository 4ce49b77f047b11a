"""What generates inside a batch actor: an in-process `LLM`, or a deployed graph.

Both answer the same three questions: the prompt front door (prompts are tokenized in the actor),
whether one row's prompt can run (`check`, an error message or None) and `generate` over the
rows that can, outputs in row order.
"""

from __future__ import annotations

from typing import Protocol

from tideflow.config import chat_template_text
from tideflow.outputs import RequestOutput
from tideflow.runtime.engine.prompt_processor import PromptProcessor
from tideflow.sampling_params import SamplingParams


class Backend(Protocol):
    prompts: PromptProcessor  # the prompt front door: tokenizer, chat template, checks

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
        self.prompts = self.llm.prompts
        self.loop = EngineLoop(self.llm.engine)

    def check(self, token_ids: list[int], params: SamplingParams) -> str | None:
        try:
            self.llm.engine.check_request(token_ids, params)
        except ValueError as exc:
            return str(exc)
        return None

    def generate(self, prompts: list[dict], params: list[SamplingParams]) -> list[RequestOutput]:
        return self.loop.generate(prompts, params)

    def close(self) -> None:
        self.llm = None


class GraphBackend:
    """A graph deployed by the driver; this actor sends it rows through its handle.

    Every actor holds its own copy of the handle, and a copy draws request ids under a fresh
    prefix, so ids never collide across actors. Prompts are checked against the model's
    vocabulary and context length, and grammars compiled, here, so that one bad row does not
    fail its whole batch inside the graph."""

    def __init__(self, handle, model: str, engine_options: dict):
        self.handle = handle  # a copy per actor: each draws request ids under its own prefix
        self.prompts = PromptProcessor.load(
            model, tokenizer=engine_options.get("tokenizer"), max_model_len=engine_options.get("max_model_len"),
            trust_remote_code=engine_options.get("trust_remote_code", False),
            chat_template=chat_template_text(engine_options.get("chat_template")),
        )

    def check(self, token_ids: list[int], params: SamplingParams) -> str | None:
        from tideflow.runtime.engine.structured.grammar import compile_grammar

        try:
            self.prompts.check_token_ids(token_ids)
            if params.structured_outputs is not None:  # tokenizer-free: the graph's engine compiles it again
                compile_grammar(params.structured_outputs)
        except ValueError as exc:
            return str(exc)
        return None

    def generate(self, prompts: list[dict], params: list[SamplingParams]) -> list[RequestOutput]:
        return self.handle.generate(prompts, params)

    def close(self) -> None:
        self.handle = None
