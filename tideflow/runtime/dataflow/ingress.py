"""Turning user prompts into the graph's request rows."""

from __future__ import annotations

import json
import time

import pyarrow as pa

from tideflow.runtime.edges import schemas
from tideflow.runtime.engine.prompt_processor import PromptType, normalize, prompt_images
from tideflow.sampling_params import SamplingParams

__all__ = ["normalize", "request_batch", "request_row"]


def request_row(request_id: str, prompt: PromptType, params: SamplingParams) -> dict:
    row = {"request_id": request_id, "sampling": schemas.params_to_row(params), "arrival_time": time.time()}
    if isinstance(prompt, str):
        row["prompt"] = prompt
    elif isinstance(prompt, dict):
        row["prompt"] = prompt.get("prompt")
        if prompt.get("prompt_token_ids") is not None:
            row["prompt_token_ids"] = [int(t) for t in prompt["prompt_token_ids"]]
        elif prompt.get("messages") is not None:  # ids given win: the conversation was tokenized already
            row["messages"] = json.dumps(prompt["messages"])
        images = _images(prompt)
        if images:
            row["images"] = images
        if row["prompt"] is None and "prompt_token_ids" not in row and "messages" not in row:
            raise ValueError("prompt: a dict prompt needs 'prompt', 'prompt_token_ids' or 'messages'")
    else:
        raise ValueError(f"prompt: expected a string or a dict, got {type(prompt).__name__}")
    return row


def _images(prompt: dict) -> list[bytes] | None:
    """A prompt's images as encoded bytes for the `images` column."""
    from tideflow.runtime.engine.core.images import check_images, image_bytes

    images = prompt_images(prompt)
    if images is None:
        return None
    return [image_bytes(image) for image in check_images(images)]


def request_batch(rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=schemas.REQUESTS)
