"""Role state as plain data for checkpoints: sequences, token streams, finished-key memories.

Everything here becomes msgpack-able dicts and lists (no pickles): a snapshot can be read by
another process, another version, or a person. A sequence is saved by its tokens and
sampling state, not its KV: restoring it queues it for recompute (re-prefill), which under
counter-based sampling seeds yields the same next tokens. `kv` optionally carries its K/V; a
multimodal prompt also keeps its image features (recomputing it needs them).
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from tideflow.runtime.edges.rows import decode_logprobs, encode_logprobs
from tideflow.runtime.edges import schemas
from tideflow.runtime.engine.api import EngineAPI
from tideflow.runtime.engine.core.images import ImageInputs
from tideflow.runtime.engine.core.sequence import Request, Sequence, SequenceStatus


def seq_state(seq: Sequence, kv: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """A live sequence as plain data (its K/V too when `kv` is given)."""
    state = {
        "request_id": seq.request_id,
        "index": seq.index,
        "token_ids": list(seq.token_ids),
        "num_prompt_tokens": seq.num_prompt_tokens,
        "params": schemas.params_to_row(seq.params),
        "max_tokens": seq.max_tokens,
        "sampling_seed": seq.sampling_seed,
        "logprobs": encode_logprobs(seq.logprobs),
        "bad_words_ids": [list(ids) for ids in seq.bad_words_ids],
        "cumulative_logprob": seq.cumulative_logprob,
        "num_cached_tokens": seq.num_cached_tokens,
        "finished": seq.finished,
        "finish_reason": seq.finish_reason,
        "stop_reason": seq.stop_reason,
    }
    if kv is not None:
        k, v = kv
        state["kv"] = {"shape": list(k.shape), "dtype": str(k.dtype), "k": k.tobytes(), "v": v.tobytes()}
    if seq.images is not None:  # a multimodal prompt: recomputing it needs its image features
        state["images"] = _images_state(seq.images)
    return state


def _images_state(images: ImageInputs) -> dict:
    features = [np.ascontiguousarray(f.cpu().numpy()) for f in images.features]
    return {
        "hashes": list(images.hashes),
        "spans": [list(span) for span in images.spans],
        "features": [{"shape": list(f.shape), "dtype": str(f.dtype), "data": f.tobytes()} for f in features],
    }


def _images_from_state(state: dict | None) -> ImageInputs | None:
    if state is None:
        return None
    import torch

    features = [
        torch.from_numpy(np.frombuffer(f["data"], np.dtype(f["dtype"])).reshape(f["shape"]).copy()) for f in state["features"]
    ]
    return ImageInputs(list(state["hashes"]), [tuple(span) for span in state["spans"]], features)


def seq_from_state(state: dict) -> Sequence:
    """A sequence rebuilt from `seq_state`, WAITING (to be recomputed) unless it had finished."""
    params = schemas.row_to_params(state["params"])
    seq = Sequence(
        state["request_id"], state["index"], list(state["token_ids"]), state["num_prompt_tokens"], params,
        state["max_tokens"],
    )
    seq.sampling_seed = state["sampling_seed"]
    seq.logprobs = decode_logprobs(state["logprobs"])
    seq.cumulative_logprob = state["cumulative_logprob"]
    seq.num_cached_tokens = state["num_cached_tokens"]
    seq.images = _images_from_state(state.get("images"))
    seq.bad_words_ids = tuple(tuple(ids) for ids in state.get("bad_words_ids") or ())
    if state["finished"]:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason, seq.stop_reason = state["finish_reason"], state["stop_reason"]
    return seq


def kv_from_state(state: dict) -> tuple[np.ndarray, np.ndarray] | None:
    kv = state.get("kv")
    if kv is None:
        return None
    shape, dtype = tuple(kv["shape"]), np.dtype(kv["dtype"])
    return np.frombuffer(kv["k"], dtype).reshape(shape), np.frombuffer(kv["v"], dtype).reshape(shape)


def stream_state(stream) -> list:
    """A `TokenStream`'s progress: [[request_id, index, rows sent, tokens sent], ...]."""
    return [[rid, index, rows, tokens] for (rid, index), (rows, tokens) in stream.sent.items()]


def restore_stream(stream, state: list) -> None:
    stream.sent = {(rid, index): [rows, tokens] for rid, index, rows, tokens in state}


class KeyMemory:
    """A bounded, insertion-ordered set of keys that are done: late or replayed input for
    them is dropped instead of being run again."""

    def __init__(self, capacity: int = 65536):
        self.capacity = capacity
        self.keys: OrderedDict = OrderedDict()

    def add(self, key) -> None:
        self.keys[key] = None
        self.keys.move_to_end(key)
        while len(self.keys) > self.capacity:
            self.keys.popitem(last=False)

    def __contains__(self, key) -> bool:
        return key in self.keys

    def state(self) -> list:
        return [list(k) if isinstance(k, tuple) else k for k in self.keys]

    def restore(self, state: list) -> None:
        self.keys = OrderedDict((tuple(k) if isinstance(k, list) else k, None) for k in state)


def requests_state(engine: EngineAPI) -> list[dict]:
    """The requests an engine holds (admission order): prompt and every sequence."""
    return [
        {
            "request_id": req.request_id,
            "prompt": req.prompt,
            "prompt_token_ids": list(req.prompt_token_ids),
            "params": schemas.params_to_row(req.params),
            "seqs": [seq_state(s) for s in req.seqs],
        }
        for req in engine.held_requests()
    ]


def restore_requests(engine: EngineAPI, state: list[dict]) -> None:
    """Hand the saved requests back to `engine`: unfinished sequences wait to be recomputed
    from their tokens (prefill of prompt plus output so far), then continue where they were."""
    for r in state:
        seqs = [seq_from_state(s) for s in r["seqs"]]
        now = time.monotonic()
        for seq in seqs:
            seq.arrival_time = now
        params = schemas.row_to_params(r["params"])
        engine.restore_request(Request(r["request_id"], r["prompt"], list(r["prompt_token_ids"]), params, seqs, now))
