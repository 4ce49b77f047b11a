"""The offline API, shaped like vLLM's `LLM`: construct once, then `generate` or `chat`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from typing import Any

from tideflow.config import engine_config
from tideflow.outputs import RequestOutput
from tideflow.sampling_params import SamplingParams

# "text" | {"prompt": "text"} | {"prompt_token_ids": [...]}; a dict may add
# "multi_modal_data": {"image": [PIL images or encoded bytes]} for a multimodal model
PromptType = str | dict[str, Any]


class LLM:
    """An in-process engine over one model.

    >>> llm = LLM("path/to/model", dtype="float32")
    >>> out = llm.generate(["Hello"], SamplingParams(max_tokens=8, temperature=0))
    >>> out[0].outputs[0].text
    """

    def __init__(self, model: str, **engine_options):
        """`model` is a HF model directory (or hub id). Engine options, all optional:
        tokenizer, dtype ("auto" | "float32" | "float64" | "bfloat16" | "float16"), seed,
        max_model_len, block_size, num_kv_blocks, kv_cache_memory_bytes,
        enable_prefix_caching, enable_chunked_prefill, max_num_seqs, max_num_batched_tokens,
        kernel_backend, model_impl, device, trust_remote_code (see `tideflow.config.engine_config`)."""
        from tideflow.runtime.engine.driver import EngineDriver
        from tideflow.runtime.engine.engine import Engine

        self.engine = Engine(engine_config(model, **engine_options))
        self._driver = EngineDriver(self.engine, keep_outputs=True)
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.engine.tokenizer

    # -- generation ---------------------------------------------------------------------------
    def generate(
        self,
        prompts: PromptType | Seq[PromptType],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in the order of the prompts.
        Every prompt is validated before any is queued, so a bad one leaves the engine untouched."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        params = self._params_per_prompt(sampling_params, len(prompts))
        encoded = [self._encode(p) for p in prompts]
        images = [_images(p) for p in prompts]
        for (text, ids), imgs, sp in zip(encoded, images, params):
            self.engine.check_request(ids, sp, images=imgs)
        request_ids = []
        try:
            for (text, ids), imgs, sp in zip(encoded, images, params):
                rid = str(next(self._ids))
                self.engine.add_request(rid, ids, sp, prompt=text, images=imgs)
                request_ids.append(rid)
        except ValueError:
            for rid in request_ids:
                self.engine.abort_request(rid)
            raise
        return self._run(request_ids, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to one conversation or a list of them, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tok = self.engine.tokenizer
        prompts = []
        for conv in conversations:
            text = tok.apply_chat_template(
                conv, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=chat_template
            )
            prompts.append({"prompt": text, "prompt_token_ids": tok.encode(text, add_special_tokens=False)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    # -- helpers ------------------------------------------------------------------------------
    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        if not use_tqdm:
            return self._driver.run(request_ids)
        from tqdm.auto import tqdm

        with tqdm(total=len(request_ids), desc="Processed prompts", unit="req", dynamic_ncols=True) as bar:
            return self._driver.run(request_ids, bar.update)

    @staticmethod
    def _params_per_prompt(sampling_params, n: int) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams()] * n
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * n
        params = list(sampling_params)
        if len(params) != n:
            raise ValueError(f"sampling_params: got {len(params)} for {n} prompts")
        return params

    def _encode(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt: the prompt is empty")
            return prompt, self.engine.tokenizer.encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), list(prompt["prompt_token_ids"])
            if "prompt" in prompt:
                return self._encode(prompt["prompt"])
        raise ValueError(f"prompt: expected a string or a dict with 'prompt' or 'prompt_token_ids', got {type(prompt).__name__}")


def _images(prompt: PromptType) -> list | None:
    """The images of a prompt (`{"multi_modal_data": {"image": [...]}}`), or None."""
    data = prompt.get("multi_modal_data") if isinstance(prompt, dict) else None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"multi_modal_data: expected a dict such as {{'image': [...]}}, got {type(data).__name__}")
    unknown = sorted(set(data) - {"image"})
    if unknown:
        raise ValueError(f"multi_modal_data: only 'image' is supported, got {unknown}")
    return data.get("image")
