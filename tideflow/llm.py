"""The offline API, shaped like vLLM's `LLM`: construct once, then `generate` or `chat`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq

from tideflow.config import engine_config
from tideflow.outputs import RequestOutput, best_completions
from tideflow.runtime.engine.prompt_processor import PromptType, normalize
from tideflow.sampling_params import SamplingParams


class LLM:
    """An in-process engine over one model.

    >>> llm = LLM("path/to/model", dtype="float32")
    >>> out = llm.generate(["Hello"], SamplingParams(max_tokens=8, temperature=0))
    >>> out[0].outputs[0].text
    """

    def __init__(self, model: str, *, gguf_file: str | None = None, **engine_options):
        """`model` is a HF model directory (or hub id). Engine options, all optional:
        tokenizer, dtype ("auto" | "float32" | "float64" | "bfloat16" | "float16"), seed,
        max_model_len, block_size, num_kv_blocks, kv_cache_memory_bytes,
        enable_prefix_caching, enable_chunked_prefill, max_num_seqs, max_num_batched_tokens,
        kernel_backend, model_impl, device, trust_remote_code, chat_template, generation_config,
        override_generation_config, cpu_bind (see `tideflow.config.engine_config`). A GGUF checkpoint:
        `model` names the .gguf file, or a directory holding `gguf_file` (converted once into a
        cached directory, tideflow.models.gguf)."""
        from tideflow.models.generation_defaults import generation_defaults
        from tideflow.models.gguf import resolve_model
        from tideflow.models.image_spec import ImagePromptSpec
        from tideflow.runtime.engine.driver import EngineDriver
        from tideflow.runtime.engine.prompt_processor import PromptProcessor
        from tideflow.runtime.parallel.engines import create_engine

        model = resolve_model(model, gguf_file)
        self.engine = engine = create_engine(engine_config(model, **engine_options))
        self.prompts = PromptProcessor(  # the prompt front door: templates and tokenizes each prompt once
            engine.tokenizer, engine.vocab_size, engine.max_model_len, ImagePromptSpec.from_config(engine.hf_config),
            engine.config.model.chat_template,
        )
        self._driver = EngineDriver(engine, keep_outputs=True)
        self._ids = itertools.count()
        # what `generate` and `chat` sample with when given no sampling_params (vLLM's semantics)
        self.generation_defaults = generation_defaults(engine.config.model)
        self.generation_defaults.log_applied("LLM")

    def get_tokenizer(self):
        return self.engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """The sampling parameters of a call without `sampling_params`: `SamplingParams()` with
        the model's generation-config defaults (temperature, top_p, top_k, min_p,
        repetition_penalty, max_new_tokens as max_tokens) in place, unless
        `generation_config="vllm"`. An explicit `SamplingParams()` is taken as it is."""
        return self.generation_defaults.sampling_params()

    # -- generation ---------------------------------------------------------------------------
    def generate(
        self,
        prompts: PromptType | Seq[PromptType],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in the order of the prompts.
        Every prompt is validated before any is queued, so a bad one leaves the engine untouched.
        Without `sampling_params`, `get_default_sampling_params()` applies."""
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        prompts, asked = normalize(prompts, sampling_params)
        params = [sp.sampled_params() for sp in asked]
        processed = [self.prompts.process(p) for p in prompts]
        for p, sp in zip(processed, params):
            self.engine.check_request(p.token_ids, sp, images=p.images)
        request_ids = []
        try:
            for p, sp in zip(processed, params):
                rid = str(next(self._ids))
                self.engine.add_request(rid, p.token_ids, sp, prompt=p.text, images=p.images)
                request_ids.append(rid)
        except ValueError:
            for rid in request_ids:
                self.engine.abort_request(rid)
            raise
        outputs = self._run(request_ids, use_tqdm)
        return [best_completions(o, sp.n, sp.logprobs is not None) if sp.ranks_completions else o
                for o, sp in zip(outputs, asked)]

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        tools: list[dict] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to one conversation or a list of them, then generate.
        `tools` (OpenAI's function tools) reach the template as its `tools` variable, as vLLM's
        `LLM.chat(tools=...)`; the output is the model's text (parse calls from it yourself, or
        constrain it with `structured_outputs`)."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = []
        for conv in conversations:
            text, ids = self.prompts.encode_chat(
                conv, add_generation_prompt=add_generation_prompt, chat_template=chat_template, tools=tools
            )
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    # -- helpers ------------------------------------------------------------------------------
    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        if not use_tqdm:
            return self._driver.run(request_ids)
        from tqdm.auto import tqdm

        with tqdm(total=len(request_ids), desc="Processed prompts", unit="req", dynamic_ncols=True) as bar:
            return self._driver.run(request_ids, bar.update)
