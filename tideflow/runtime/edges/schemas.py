"""The Arrow schemas that travel on graph edges, and conversions to and from them.

One row is one request (or one completion's step output). A request's full data (prompt,
sampling parameters) is sent once; later rows for it carry only what changed. Large tensors
(KV blocks) never travel in Arrow columns: they ride beside the batch as references.
"""

from __future__ import annotations

import json

import pyarrow as pa

from tideflow.sampling_params import SamplingParams

SAMPLING = pa.struct(
    [
        ("n", pa.int32()),
        ("best_of", pa.int32()),  # null -> n
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("top_k", pa.int32()),
        ("min_p", pa.float64()),
        ("repetition_penalty", pa.float64()),
        ("presence_penalty", pa.float64()),
        ("frequency_penalty", pa.float64()),
        ("seed", pa.int64()),  # null -> unseeded
        ("max_tokens", pa.int32()),  # null -> up to the context length
        ("min_tokens", pa.int32()),
        ("stop", pa.list_(pa.string())),
        ("stop_token_ids", pa.list_(pa.int32())),
        ("ignore_eos", pa.bool_()),
        ("include_stop_str_in_output", pa.bool_()),
        ("logprobs", pa.int32()),  # null -> none
        ("skip_special_tokens", pa.bool_()),
        ("prompt_logprobs", pa.int32()),  # null -> none
        ("logit_bias", pa.map_(pa.int32(), pa.float64())),  # null -> none
        ("allowed_token_ids", pa.list_(pa.int32())),  # null -> any token
        ("bad_words", pa.list_(pa.string())),
        ("pooling", pa.string()),  # null -> no embedding
        # null -> unconstrained; else JSON of StructuredOutputsParams.as_dict(), e.g. {"json": {schema}}
        ("structured_outputs", pa.string()),
    ]
)

# What one completion of a migrated request had delivered when the replica running it died
# (request migration, docs/reliability.md fault 10): a live peer rebuilds it from the prompt
# plus these tokens (re-prefill) and goes on from row `rows`, so the sink's (request_id, seq)
# dedup sees one unbroken stream.
PROGRESS = pa.struct(
    [
        ("index", pa.int32()),  # completion index, 0..n-1
        ("rows", pa.int64()),  # rows the sink took: the continuation's first row is seq `rows`
        ("token_ids", pa.list_(pa.int32())),  # the output tokens those rows carried
        ("logprobs", pa.binary()),  # their logprob entries (encode_logprobs), or null
        ("finished", pa.bool_()),  # the completion had finished already: nothing to continue
        ("sampling_seed", pa.int64()),  # its counter-based sampling seed when known, or null
    ]
)
RESUME = pa.list_(PROGRESS)  # a migrated request: one PROGRESS per completion to rebuild; null: a new request

# source -> tokenizer: what a user submits
REQUESTS = pa.schema(
    [
        ("request_id", pa.string()),
        ("prompt", pa.string()),  # text prompt, or null
        ("messages", pa.string()),  # chat messages as JSON, or null
        ("prompt_token_ids", pa.list_(pa.int32())),  # pre-tokenized prompt, or null
        ("sampling", SAMPLING),
        ("arrival_time", pa.float64()),  # wall-clock seconds
        ("images", pa.list_(pa.binary())),  # encoded images (PNG, JPEG ...) of a multimodal prompt, or null
    ]
)

# tokenizer -> engine / prefill: a prompt ready to run
TOKENIZED = pa.schema(
    [
        ("request_id", pa.string()),
        ("prompt", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("sampling", SAMPLING),
        ("arrival_time", pa.float64()),
        ("error", pa.string()),  # why the request was rejected upstream, or null
        # encoded images of a multimodal prompt, or null; an encoder stage sends their features
        # beside the batch (attachment "request_id/0": [tokens_per_image, hidden] per image)
        ("images", pa.list_(pa.binary())),
        ("resume", RESUME),  # null, unless the request moved from a replica that died (PROGRESS)
    ]
)

# prefill -> decode: one completion whose prompt is computed; its KV rides beside the batch
PREFILLED = pa.schema(
    [
        ("request_id", pa.string()),
        ("index", pa.int32()),  # completion index, 0..n-1
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("sampling", SAMPLING),
        ("arrival_time", pa.float64()),
        ("first_token_id", pa.int32()),  # sampled by prefill
        ("first_logprobs", pa.binary()),  # msgpack of {token_id: (logprob, rank)}, or null
        ("prompt_logprobs", pa.binary()),  # the request's prompt logprobs (encode_prompt_logprobs), or null
        ("embedding", pa.list_(pa.float64())),  # the request's embedding (sampling.pooling), or null
        # the counter-based sampling seed fixed at the first random draw (null: greedy so far);
        # with it, decode draws exactly what prefill's engine would have drawn next
        ("sampling_seed", pa.int64()),
        ("finished", pa.bool_()),  # the first token already ended it (EOS, max_tokens=1, ...)
        ("finish_reason", pa.string()),
        ("stop_token_id", pa.int32()),
        ("error", pa.string()),
        ("resume", RESUME),  # null, unless the completion moved from a decode replica that died (PROGRESS)
    ]
)

# engine / decode -> detokenizer: the new tokens of one completion at one step
TOKENS = pa.schema(
    [
        ("request_id", pa.string()),
        ("index", pa.int32()),
        ("seq", pa.int64()),  # 0, 1, 2 ... per (request_id, index): exactly-once key
        ("new_token_ids", pa.list_(pa.int32())),
        ("logprobs", pa.binary()),  # msgpack list (one per new token) of {token_id: (logprob, rank)}, or null
        ("finished", pa.bool_()),
        ("finish_reason", pa.string()),
        ("stop_reason", pa.string()),  # the stop string that ended it, or null
        ("stop_token_id", pa.int32()),  # the stop token id that ended it, or null
        ("producer", pa.int32()),  # replica index of the producing stage (aborts go back to it)
        ("prompt_token_ids", pa.list_(pa.int32())),  # only on seq == 0, else null
        ("sampling", SAMPLING),  # only on seq == 0, else null
        ("num_cached_tokens", pa.int32()),  # prefix-cache hit, on seq == 0
        ("prompt_logprobs", pa.binary()),  # the request's prompt logprobs (encode_prompt_logprobs), on seq == 0 of index 0
        ("embedding", pa.list_(pa.float64())),  # the request's embedding (sampling.pooling), on seq == 0 of index 0
        ("error", pa.string()),  # the request failed (finish_reason "error"), or null
    ]
)

# detokenizer -> sink: the text delta of one completion at one step
OUTPUTS = pa.schema(
    [
        ("request_id", pa.string()),
        ("index", pa.int32()),
        ("seq", pa.int64()),
        ("new_token_ids", pa.list_(pa.int32())),
        ("text", pa.string()),  # text added by these tokens (may be empty while a character is split)
        ("logprobs", pa.binary()),
        ("finished", pa.bool_()),
        ("finish_reason", pa.string()),
        ("stop_reason", pa.string()),
        ("stop_token_id", pa.int32()),
        ("prompt_token_ids", pa.list_(pa.int32())),  # only on seq == 0
        ("error", pa.string()),
        ("prompt_logprobs", pa.binary()),  # as on TOKENS
        ("embedding", pa.list_(pa.float64())),  # as on TOKENS
    ]
)

ALL = {"requests": REQUESTS, "tokenized": TOKENIZED, "prefilled": PREFILLED, "tokens": TOKENS, "outputs": OUTPUTS}


def schema_name(schema: pa.Schema) -> str:
    for name, s in ALL.items():
        if s.equals(schema):
            return name
    return "custom"


def params_to_row(p: SamplingParams) -> dict:
    return {
        "n": p.n,
        "best_of": p.best_of,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "min_p": p.min_p,
        "repetition_penalty": p.repetition_penalty,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "seed": p.seed,
        "max_tokens": p.max_tokens,
        "min_tokens": p.min_tokens,
        "stop": list(p.stop),
        "stop_token_ids": list(p.stop_token_ids),
        "ignore_eos": p.ignore_eos,
        "include_stop_str_in_output": p.include_stop_str_in_output,
        "logprobs": p.logprobs,
        "skip_special_tokens": p.skip_special_tokens,
        "prompt_logprobs": p.prompt_logprobs,
        "logit_bias": None if p.logit_bias is None else list(p.logit_bias.items()),
        "allowed_token_ids": None if p.allowed_token_ids is None else list(p.allowed_token_ids),
        "bad_words": list(p.bad_words),
        "pooling": p.pooling,
        "structured_outputs": None if p.structured_outputs is None else json.dumps(p.structured_outputs.as_dict()),
    }


def row_to_params(row: dict) -> SamplingParams:
    row = dict(row)
    row["stop"] = tuple(row["stop"] or ())
    row["stop_token_ids"] = tuple(row["stop_token_ids"] or ())
    row["bad_words"] = tuple(row.get("bad_words") or ())
    if row.get("logit_bias") is not None:
        row["logit_bias"] = dict(row["logit_bias"])  # Arrow maps come back as (key, value) pairs
    if row.get("structured_outputs") is not None:
        row["structured_outputs"] = json.loads(row["structured_outputs"])
    return SamplingParams(**row)
