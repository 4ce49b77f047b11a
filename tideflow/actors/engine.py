"""The colocated Engine role: prefill and decode in one engine, streaming tokens every step."""

from __future__ import annotations

import pyarrow as pa

from tideflow.runtime.dataflow.role import Emission, StageContext, StageRole
from tideflow.runtime.edges.rows import TokenStream, error_row, to_batch
from tideflow.runtime.recovery.snapshot_codec import (
    KeyMemory,
    generator_state,
    requests_state,
    restore_generator,
    restore_requests,
    restore_stream,
    stream_state,
)
from tideflow.runtime.edges import schemas


def features_key(request_id: str) -> str:
    """The attachment key of a request's image features (an encoder stage sends them)."""
    return f"{request_id}/0"

# options that describe the stage, not the engine
_STAGE_OPTIONS = ("model", "num_threads", "max_pending", "checkpoint_kv")


def capacity(options: dict) -> int:
    """Requests an engine-owning role holds before it stops taking input (`max_pending`;
    default twice the running-sequence limit)."""
    return int(options.get("max_pending", 2 * options.get("max_num_seqs", 64)))


def build_engine(options: dict):
    """An engine core (no detokenizer: text is the detokenizer stage's job) from stage options.
    `expert_*` options (`expert_actors=K` ...) move the MoE experts onto K expert actors
    started beside the core (tideflow.runtime.parallel.expert_parallel), held as `core.expert_parallel`."""
    from tideflow.config import engine_config, expert_parallel_config
    from tideflow.runtime.engine.engine import Engine as EngineCore

    if "num_threads" in options:
        import torch

        torch.set_num_threads(int(options["num_threads"]))
    experts, engine_options = expert_parallel_config({k: v for k, v in options.items() if k not in _STAGE_OPTIONS})
    core = EngineCore(engine_config(options["model"], **engine_options), detokenize=False)
    if experts is not None:
        from tideflow.runtime.parallel.expert_parallel import start_expert_parallel

        core.expert_parallel = start_expert_parallel(core, experts)
    return core


def admit(core, row: dict, producer: int, attachments: dict | None = None) -> dict | None:
    """Queue one TOKENIZED row on `core`; an error row when it cannot run. The row's images
    come with their features when an encoder stage sent them (`attachments`), else the engine
    encodes them itself (a replayed row, or a graph without an encoder stage)."""
    if row.get("error"):
        return error_row(row["request_id"], row["error"], producer)
    features = (attachments or {}).get(features_key(row["request_id"])) if row.get("images") else None
    try:
        core.add_request(
            row["request_id"], row["prompt_token_ids"], schemas.row_to_params(row["sampling"]), row["prompt"],
            images=row.get("images"), image_features=features,
        )
    except (ValueError, TypeError) as exc:
        return error_row(row["request_id"], str(exc), producer)
    return None


def expert_stats(parallel) -> dict:
    """An expert-parallel engine's per-expert token counts, placement and dispatch cost, and
    each expert actor's own counts (`expert_actor_stats`, one round trip to the actors)."""
    return {**parallel.stats(), "expert_actor_stats": parallel.actor_stats()}


def engine_stats(core) -> dict:
    blocks = core.blocks
    return {
        "num_requests_running": len(core.scheduler.running),
        "num_requests_waiting": len(core.scheduler.waiting),
        "kv_cache_usage_perc": blocks.usage,
        "prefix_cache_queries": blocks.stats.queries,
        "prefix_cache_hits": blocks.stats.hits,
        "num_preemptions": core.scheduler.num_preemptions,
        **(expert_stats(core.expert_parallel) if hasattr(core, "expert_parallel") else {}),
        "images_encoded": core.images.num_encoded,  # images this engine ran its own vision tower on
    }


class Engine(StageRole):
    consumes = schemas.TOKENIZED
    produces = schemas.TOKENS
    needs_model = True
    routing = "prefix"

    def __init__(self, context: StageContext):
        super().__init__(context)
        self.core = build_engine(context.options)
        self.stream = TokenStream(context.replica)
        self.ready: list[dict] = []  # rows to send before the next step (errors)
        self.capacity = capacity(context.options)
        self.done = KeyMemory()  # request ids finished here: a replayed row of one is dropped

    def push(self, batch: pa.RecordBatch, attachments=None) -> None:
        for row in batch.to_pylist():
            if row["request_id"] in self.core.requests or row["request_id"] in self.done:
                continue  # a replayed or retried input this engine already holds
            err = admit(self.core, row, self.context.replica, attachments)
            if err is not None:
                self.ready.append(err)

    def poll(self) -> list[Emission]:
        rows, self.ready = self.ready, []
        if self.core.has_unfinished():
            produced = self.core.step()
            rows += self.stream.rows(produced)
            for seq in produced:
                req = self.core.requests.get(seq.request_id)
                if req is not None and req.finished:
                    del self.core.requests[seq.request_id]
                    self.done.add(seq.request_id)
        return [Emission(to_batch(rows, self.produces))] if rows else []

    def has_work(self) -> bool:
        return bool(self.ready) or self.core.has_unfinished()

    def load(self) -> int:
        return self.core.scheduler.num_unfinished

    def accepting(self) -> bool:
        return self.load() < self.capacity

    def abort(self, targets: list[tuple[str, int | None]]) -> None:
        for request_id, index in targets:
            req = self.core.requests.get(request_id)
            if req is None:
                continue
            seqs = req.seqs if index is None else [s for s in req.seqs if s.index == index]
            self.core.scheduler.abort(seqs)
            self.stream.forget(request_id, index)
            if req.finished:
                del self.core.requests[request_id]
                self.done.add(request_id)

    def stats(self) -> dict:
        return engine_stats(self.core)

    def snapshot(self) -> dict:
        return {
            "requests": requests_state(self.core),
            "stream": stream_state(self.stream),
            "ready": list(self.ready),
            "done": self.done.state(),
            "generator": generator_state(self.core),
        }

    def restore(self, state: dict) -> None:
        restore_requests(self.core, state["requests"])
        restore_stream(self.stream, state["stream"])
        self.ready = list(state["ready"])
        self.done.restore(state["done"])
        restore_generator(self.core, state["generator"])
