"""`POST /v1/embeddings`: each input's L2-normalized pooled hidden state from the served model
(last-token or mean pooling, `SamplingParams.pooling`), in OpenAI's response shape.

An input runs through the graph as a prompt with max_tokens 1 whose output carries its
embedding; the generated token is ignored.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from tideflow.sampling_params import SamplingParams
from tideflow.serve.errors import bad_request
from tideflow.serve.model_info import ModelInfo
from tideflow.serve.prepare import check_model, completion_prompts
from tideflow.serve.protocol import EmbeddingRequest


@dataclass(frozen=True)
class PreparedEmbeddings:
    """One validated embeddings request: the graph prompts and how to pool and encode them."""

    prompts: list
    num_prompt_tokens: list[int]
    params: SamplingParams
    encoding_format: str  # "float" | "base64"


def prepare_embeddings(req: EmbeddingRequest, info: ModelInfo) -> PreparedEmbeddings:
    check_model(req.model, info)
    if req.encoding_format not in ("float", "base64"):
        raise bad_request(f"'encoding_format' must be 'float' or 'base64', got {req.encoding_format!r}",
                          "encoding_format")
    if req.dimensions is not None:
        raise bad_request("'dimensions' is not supported", "dimensions", code="unsupported_parameter")
    if req.pooling not in ("last", "mean"):
        raise bad_request(f"'pooling' must be 'last' or 'mean', got {req.pooling!r}", "pooling")
    prompts, _, lengths = completion_prompts(req.input, info, "input")
    longest = max(lengths)
    if longest >= info.max_model_len:
        raise bad_request(f"This model's maximum context length is {info.max_model_len} tokens. However, an input "
                          f"has {longest} tokens.", "input", code="context_length_exceeded")
    params = SamplingParams(max_tokens=1, temperature=0.0, pooling=req.pooling)
    return PreparedEmbeddings(prompts, lengths, params, req.encoding_format)


def embeddings_response(prep: PreparedEmbeddings, info: ModelInfo, embeddings: list[list[float]]) -> dict:
    data = []
    for i, vector in enumerate(embeddings):
        if prep.encoding_format == "base64":
            encoded = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        else:
            encoded = list(vector)
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = sum(prep.num_prompt_tokens)
    return {"object": "list", "data": data, "model": info.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
