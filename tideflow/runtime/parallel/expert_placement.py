"""Which expert actor holds which experts of each MoE layer.

An expert-parallel engine spreads a MoE model's experts over K actors. Two policies
(`PLACEMENTS`):

- "even": expert e of every layer goes to actor `e * K // E`: contiguous runs of experts,
  run lengths differing by at most one. Needs no knowledge of the traffic.
- "balanced": per layer, from per-expert token counts (a warm-up run or a recorded trace,
  `[layer][expert]`), longest-processing-time first: an expert that carries more than an
  actor's fair share (total / K) is replicated on `ceil(count / share)` actors, each replica
  taking an equal part of its tokens; the pieces, largest first, each go to the least loaded
  actor that does not hold that expert yet. Every actor gets at least one piece (there are
  at least K experts), so no actor idles while another is overloaded.

Replicas of an expert split its tokens of a step into near-equal contiguous parts
(`replica_rows`), so the dispatch stays deterministic and the output does not depend on the
placement. Torch-free: the scheduler-side tests build placements from plain lists.
"""

from __future__ import annotations

import heapq
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

PLACEMENTS = ("even", "balanced")


def check_expert_actors(expert_actors, num_experts: int) -> int:
    """`expert_actors` as an int in [1, num_experts]; ValueError naming it otherwise
    (`num_experts` 0: the model has no MoE layers)."""
    if num_experts < 1:
        raise ValueError("expert_actors: the model has no MoE layers (no routed experts in its config)")
    if isinstance(expert_actors, bool) or not isinstance(expert_actors, numbers.Integral) or not 1 <= expert_actors <= num_experts:
        raise ValueError(f"expert_actors must be an integer in [1, {num_experts}] (the model's experts), got {expert_actors!r}")
    return int(expert_actors)


@dataclass(frozen=True)
class ExpertPlacement:
    """Where the experts of every MoE layer live. Built by `even_placement` / `balanced_placement`."""

    num_actors: int  # K
    num_experts: int  # E, routed experts per MoE layer
    layers: tuple[int, ...]  # model layer index of each MoE layer, ascending
    holders: tuple[tuple[tuple[int, ...], ...], ...]  # MoE layer position -> expert -> actor ids holding it (ascending)

    def __post_init__(self) -> None:
        if len(self.holders) != len(self.layers):
            raise ValueError(f"placement: {len(self.holders)} layers of holders for {len(self.layers)} MoE layers")
        for per_layer in self.holders:
            if len(per_layer) != self.num_experts:
                raise ValueError(f"placement: a layer places {len(per_layer)} experts, the model has {self.num_experts}")
            for actors in per_layer:
                if not actors or any(not 0 <= a < self.num_actors for a in actors) or len(set(actors)) != len(actors):
                    raise ValueError(f"placement: every expert needs distinct holders in [0, {self.num_actors}), got {actors}")

    def experts_of(self, actor: int) -> dict[int, list[int]]:
        """model layer index -> the experts `actor` holds there, ascending."""
        return {
            layer: [e for e, actors in enumerate(per_layer) if actor in actors]
            for layer, per_layer in zip(self.layers, self.holders)
        }

    def replica_of(self, position: int, expert: int, actor: int) -> tuple[int, int]:
        """(which replica `actor` is of `expert` at MoE layer `position`, how many replicas it has)."""
        actors = self.holders[position][expert]
        return actors.index(actor), len(actors)

    def actor_load(self, load: Sequence[Sequence[int]]) -> list[list[float]]:
        """Per MoE layer, the tokens each actor would run under `load` ([layer][expert])."""
        out = []
        for per_layer, counts in zip(self.holders, load):
            acc = [0.0] * self.num_actors
            for actors, c in zip(per_layer, counts):
                for a in actors:
                    acc[a] += c / len(actors)
            out.append(acc)
        return out

    def to_lists(self) -> list[list[list[int]]]:
        """holders as nested lists (msgpack / JSON friendly)."""
        return [[list(actors) for actors in per_layer] for per_layer in self.holders]


def even_placement(layers: Sequence[int], num_experts: int, num_actors: int) -> ExpertPlacement:
    """Contiguous runs of experts per actor, the same for every layer."""
    check_expert_actors(num_actors, num_experts)
    per_layer = tuple((e * num_actors // num_experts,) for e in range(num_experts))
    return ExpertPlacement(num_actors, num_experts, tuple(layers), tuple(per_layer for _ in layers))


def _nested(load) -> bool:
    return len(load) > 0 and hasattr(load[0], "__len__")


def check_load(load, num_layers: int, num_experts: int) -> tuple[tuple[float, ...], ...]:
    """Per-expert token counts as `[layer][expert]` non-negative numbers; a flat `[expert]`
    list applies to every layer. ValueError naming `expert_load` otherwise."""
    try:
        rows = [list(r) for r in load] if _nested(load) else [list(load)] * num_layers
    except TypeError:
        raise ValueError(f"expert_load must be per-expert token counts ([layer][expert] or [expert]), got {load!r}") from None
    if len(rows) != num_layers or any(len(r) != num_experts for r in rows):
        shape = [len(r) for r in rows]
        raise ValueError(f"expert_load must have {num_layers} layers of {num_experts} counts, got rows of lengths {shape}")
    for r in rows:
        for c in r:
            if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(c) or c < 0:
                raise ValueError(f"expert_load: counts must be numbers >= 0, got {c!r}")
    return tuple(tuple(float(c) for c in r) for r in rows)


def balanced_placement(layers: Sequence[int], load, num_actors: int) -> ExpertPlacement:
    """Replicate experts above an actor's fair share and pack the pieces largest first onto
    the least loaded actor (see the module docstring). `load` is `[layer][expert]` (or one
    `[expert]` list for every layer); deterministic for equal input."""
    try:
        num_experts = len(load[0]) if _nested(load) else len(load)
    except TypeError:
        raise ValueError(f"expert_load must be per-expert token counts ([layer][expert] or [expert]), got {load!r}") from None
    check_expert_actors(num_actors, num_experts)
    rows = check_load(load, len(layers), num_experts)
    holders = tuple(_balance_layer(counts, num_actors) for counts in rows)
    return ExpertPlacement(num_actors, num_experts, tuple(layers), holders)


def _balance_layer(counts: Sequence[float], num_actors: int) -> tuple[tuple[int, ...], ...]:
    total = float(sum(counts))
    if total <= 0:
        return tuple((e * num_actors // len(counts),) for e in range(len(counts)))
    share = total / num_actors
    replicas = [min(num_actors, max(1, math.ceil(c / share - 1e-9))) for c in counts]
    pieces = sorted(((c / r, e) for e, (c, r) in enumerate(zip(counts, replicas)) for _ in range(r)), key=lambda p: (-p[0], p[1]))
    heap = [(0.0, 0, a) for a in range(num_actors)]  # (load, pieces held, actor id): least loaded first
    holders: list[list[int]] = [[] for _ in counts]
    for size, e in pieces:
        skipped = []
        while True:
            load, held, a = heapq.heappop(heap)
            if a not in holders[e]:
                break
            skipped.append((load, held, a))
        holders[e].append(a)
        heapq.heappush(heap, (load + size, held + 1, a))
        for item in skipped:
            heapq.heappush(heap, item)
    return tuple(tuple(sorted(h)) for h in holders)


def replica_rows(count: int, replica: int, replicas: int) -> tuple[int, int]:
    """The part [lo, hi) of an expert's `count` rows that replica `replica` of `replicas` runs."""
    return count * replica // replicas, count * (replica + 1) // replicas
