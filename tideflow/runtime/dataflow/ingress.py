"""Turning user prompts into the graph's request rows."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence as Seq
from typing import Any

import pyarrow as pa

from tideflow.runtime.edges import schemas
from tideflow.sampling_params import SamplingParams

# "text" | {"prompt": "text"} | {"prompt_token_ids": [...]} | {"messages": [{"role", "content"}, ...]};
# a dict may add "multi_modal_data": {"image": [PIL images or encoded bytes]}
PromptType = str | dict[str, Any]


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


def request_row(request_id: str, prompt: PromptType, params: SamplingParams) -> dict:
    row = {"request_id": request_id, "sampling": schemas.params_to_row(params), "arrival_time": time.time()}
    if isinstance(prompt, str):
        row["prompt"] = prompt
    elif isinstance(prompt, dict):
        row["prompt"] = prompt.get("prompt")
        if prompt.get("prompt_token_ids") is not None:
            row["prompt_token_ids"] = [int(t) for t in prompt["prompt_token_ids"]]
        if prompt.get("messages") is not None:
            row["messages"] = json.dumps(prompt["messages"])
        images = _images(prompt.get("multi_modal_data"))
        if images:
            row["images"] = images
        if row["prompt"] is None and "prompt_token_ids" not in row and "messages" not in row:
            raise ValueError("prompt: a dict prompt needs 'prompt', 'prompt_token_ids' or 'messages'")
    else:
        raise ValueError(f"prompt: expected a string or a dict, got {type(prompt).__name__}")
    return row


def _images(data) -> list[bytes] | None:
    """`{"image": [PIL images or bytes]}` as encoded bytes; ValueError naming the field otherwise."""
    from tideflow.runtime.engine.core.images import check_images, image_bytes

    if data is None:
        return None
    if not isinstance(data, dict) or set(data) - {"image"}:
        raise ValueError("multi_modal_data: expected a dict with only the key 'image'")
    return [image_bytes(image) for image in check_images(data.get("image"))]


def request_batch(rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=schemas.REQUESTS)
