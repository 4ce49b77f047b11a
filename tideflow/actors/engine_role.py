"""What the engine-owning roles (Engine, Prefill, Decode) share: building the engine from the
stage's parsed config, admitting tokenized rows, capacity and load, stats, and the engine's part of a
snapshot. Each role keeps only what differs: what it does with a step's output.

Roles use their engine through `tideflow.runtime.engine.api.EngineAPI` only, and step it
through one `EngineDriver`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import ClassVar

import pyarrow as pa

from tideflow.runtime.dataflow.role import StageContext, StageRole
from tideflow.runtime.dataflow.stage_config import StageConfig
from tideflow.runtime.edges import schemas
from tideflow.runtime.edges.error_rows import error_row
from tideflow.runtime.engine.api import EngineAPI
from tideflow.runtime.engine.driver import EngineDriver
from tideflow.runtime.recovery.snapshot_codec import KeyMemory, requests_state, restore_requests


def features_key(request_id: str) -> str:
    """The attachment key of a request's image features (an encoder stage sends them)."""
    return f"{request_id}/0"


def build_engine(config: StageConfig) -> EngineAPI:
    """An engine (no detokenizer: text is the detokenizer stage's job) from the stage's
    `EngineConfig`. With an expert-parallel part (`expert_actors=K` ...) the MoE experts move
    onto K expert actors started beside the engine (tideflow.runtime.parallel.expert_parallel),
    attached with `attach_experts`."""
    from tideflow.runtime.parallel.engines import create_engine

    set_threads(config)
    engine = create_engine(config.engine, detokenize=False)
    if config.experts is not None:
        from tideflow.runtime.parallel.expert_parallel import start_expert_parallel

        engine.attach_experts(start_expert_parallel(engine, config.experts))
    return engine


def set_threads(config: StageConfig) -> None:
    """Give this process the stage's `num_threads` torch threads (when it sets them)."""
    if config.stage.num_threads is not None:
        import torch

        torch.set_num_threads(config.stage.num_threads)


def admit(engine: EngineAPI, row: dict, attachments: dict | None = None) -> str | None:
    """Queue one TOKENIZED row on `engine`; why it cannot run when it cannot. The row's images
    come with their features when an encoder stage sent them (`attachments`), else the engine
    encodes them itself (a replayed row, or a graph without an encoder stage)."""
    if row.get("error"):
        return row["error"]
    features = (attachments or {}).get(features_key(row["request_id"])) if row.get("images") else None
    try:
        engine.add_request(
            row["request_id"], row["prompt_token_ids"], schemas.row_to_params(row["sampling"]), row["prompt"],
            images=row.get("images"), image_features=features,
        )
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def engine_stats(engine: EngineAPI) -> dict:
    """An engine's stats as a role reports them (its expert actors' too, when it has them)."""
    return {**dataclasses.asdict(engine.stats()), **engine.expert_stats()}


class EngineRole(StageRole):
    """A role that owns an engine. Subclasses implement `push` and `poll` (and `abort`)."""

    needs_model = True
    requires_model = True
    takes_extra_options = False
    # True: the role admits whole requests (engine, prefill); `done` holds request ids and a
    # snapshot carries the engine's requests and generator. False (decode): it adopts single
    # completions, which it tracks and snapshots itself, keyed (request_id, index).
    holds_requests: ClassVar[bool] = True

    def __init__(self, context: StageContext):
        super().__init__(context)
        self.engine = build_engine(context.config)
        self.capacity = context.config.max_pending  # requests held before input waits
        self.ready: list[dict] = []  # rows to send before the next step (errors, pass-throughs)
        self.done = KeyMemory()  # what finished here: replayed or late input for it is dropped
        self.driver = EngineDriver(self.engine, done=self.done if self.holds_requests else None)

    def _new_rows(self, batch: pa.RecordBatch) -> Iterator[dict]:
        """The rows of `batch` this role has not seen: a replayed or retried input of a
        request it holds or finished is dropped."""
        for row in batch.to_pylist():
            if not (self.engine.has_request(row["request_id"]) or row["request_id"] in self.done):
                yield row

    def _fail(self, request_id: str, message: str, index: int = 0) -> None:
        """Send the request on as failed (`error_row` of this role's output schema)."""
        self.ready.append(error_row(self.produces, request_id, message, index=index, producer=self.context.replica))

    def _take_ready(self) -> list[dict]:
        rows, self.ready = self.ready, []
        return rows

    def has_work(self) -> bool:
        return bool(self.ready) or self.engine.has_unfinished()

    def load(self) -> int:
        return self.engine.num_unfinished

    def accepting(self) -> bool:
        return self.load() < self.capacity

    def disown(self, targets: list[tuple[str, int | None]]) -> None:
        self.abort(targets)
        for request_id, index in targets:  # input for them still to come (the replayed log) is dropped
            self.done.add(request_id if self.holds_requests else (request_id, index))

    def stats(self) -> dict:
        return engine_stats(self.engine)

    def snapshot(self) -> dict:
        state = {"ready": list(self.ready), "done": self.done.state()}
        if self.holds_requests:
            state["requests"] = requests_state(self.engine)
            state["generator"] = self.engine.generator_state()
        return state

    def restore(self, state: dict) -> None:
        if self.holds_requests:
            restore_requests(self.engine, state["requests"])
            self.engine.restore_generator(state["generator"])
        self.ready = list(state["ready"])
        self.done.restore(state["done"])
