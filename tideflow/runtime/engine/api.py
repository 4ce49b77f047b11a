"""What an engine offers the code above it: `EngineAPI`, the public face of `Engine`.

Stage roles, the offline `LLM`, the batch loop, the benchmarks and the checkpoint codec use an
engine through these members only; its scheduler, block manager, model runner and request
table stay inside `tideflow.runtime.engine`. (`tests/actors/test_engine_role_public_api.py`
drives a role through a proxy that allows nothing else.)

Sequences and requests cross this boundary as `tideflow.runtime.engine.core.sequence`
records; callers read them, and mutate only sequences they built themselves
(`new_sequence`) before handing them over (`adopt`, `recompute`).
"""

from __future__ import annotations

from typing import Any, Protocol

from tideflow.config import EngineConfig
from tideflow.runtime.engine.core.outputs import EngineOutput, EngineStats
from tideflow.runtime.engine.core.sequence import Request, Sequence
from tideflow.sampling_params import SamplingParams


class ExpertDispatch(Protocol):
    """The expert actors an engine's MoE layers dispatch to (tideflow.runtime.parallel.expert_parallel)."""

    def stats(self) -> dict:
        """Per-expert token counts, placement and dispatch cost so far. Mutates nothing."""

    def actor_stats(self) -> list[dict]:
        """Each expert actor's own counts (one round trip to the actors). Mutates nothing."""

    def close(self) -> None:
        """Stop the expert actors."""


class EngineAPI(Protocol):
    """An in-process engine, as its callers see it. Not thread-safe: one thread drives it."""

    config: EngineConfig  # resolved (max_model_len and the token budget filled in)
    tokenizer: Any  # the model's HF tokenizer
    vocab_size: int
    max_model_len: int  # context length, prompt plus output
    eos_token_ids: frozenset[int]
    model: Any  # the loaded torch model (expert parallelism rebinds its experts modules)
    hf_config: Any  # the model's HF config
    experts: ExpertDispatch | None  # where the MoE experts run when not here (attach_experts)

    # -- requests (mutate the request table and the queue) ------------------------------------
    def check_request(self, prompt_token_ids, params: SamplingParams, images=None) -> list[int]:
        """The prompt's ids if the request could ever run here, else ValueError naming the
        field. Queues nothing."""

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    prompt: str | None = None, images=None, image_features=None) -> Request:
        """Validate and queue a request (ValueError, queueing nothing, when it can never run)."""

    def abort_request(self, request_id: str, index: int | None = None) -> bool:
        """Stop a request's completions (all, or completion `index`); a request with none left
        running is dropped. Whether the request was held."""

    def pop_finished(self, request_id: str) -> Request:
        """Drop a finished request and return it."""

    def has_request(self, request_id: str) -> bool:
        """Whether the request is held here (not yet dropped)."""

    def sequence(self, request_id: str, index: int) -> Sequence:
        """Completion `index` of a held request. Read-only."""

    def has_unfinished(self) -> bool:
        """Whether any sequence runs or waits here."""

    @property
    def num_unfinished(self) -> int:
        """Sequences running or queued: the engine's load."""

    # -- completions that move between engines ------------------------------------------------
    def new_sequence(self, request_id: str, index: int, ids: list[int], params: SamplingParams,
                     arrival_time: float = 0.0) -> Sequence:
        """A fresh sequence for completion `index` (not queued), its output limit resolved."""

    def adopt(self, seq: Sequence, k, v) -> bool:
        """Run a sequence prefilled elsewhere with its K/V written into this cache; False,
        holding nothing, when blocks or slots are short."""

    def recompute(self, seq: Sequence) -> None:
        """Queue a sequence to be computed again from its tokens."""

    def read_kv(self, seq: Sequence):
        """The K/V of a sequence's computed tokens (numpy [layers, tokens, kv_heads, head_dim] each)."""

    def release(self, seqs: list[Sequence]) -> list[str]:
        """Stop sequences that leave (handed off or aborted) and free their blocks; returns the
        ids of the requests that this left with nothing running (they are dropped)."""

    # -- the step -----------------------------------------------------------------------------
    def step(self) -> EngineOutput:
        """Schedule, execute and update once; what the step produced."""

    # -- state --------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """Occupancy and cache counters. Mutates nothing."""

    def held_requests(self) -> list[Request]:
        """The held requests in admission order (for snapshots). Read-only."""

    def restore_request(self, request: Request) -> None:
        """Hold a request rebuilt from a snapshot; its unfinished sequences are recomputed."""

    def generator_state(self) -> bytes:
        """The sampler's random generator state."""

    def restore_generator(self, state: bytes) -> None:
        """Set the sampler's random generator from `generator_state`'s bytes."""

    def attach_experts(self, experts: ExpertDispatch) -> None:
        """Record the expert actors the model's MoE layers now dispatch to."""

    def expert_stats(self) -> dict:
        """The attached expert actors' stats ({} when the experts run here)."""


def api_members() -> frozenset[str]:
    """The names `EngineAPI` declares: attributes and methods."""
    names = set(EngineAPI.__annotations__)
    names.update(n for n in vars(EngineAPI) if not n.startswith("_"))
    return frozenset(names)
