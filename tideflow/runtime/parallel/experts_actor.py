"""The Experts actor: some experts of every MoE layer of a model, run on the rows sent to it.

Not a graph stage (`StageRole`): no Arrow batches reach it. An engine-owning role (engine,
prefill or decode) whose options ask for `expert_actors=K` starts K of these beside itself
(`tideflow.runtime.parallel.expert_parallel`) and calls `forward` once per actor per MoE layer per
step, while attention and routing stay in the engine. The actor loads only its own experts'
weights (`tideflow.runtime.parallel.expert_checkpoint`) and imports torch, not transformers; replicas
of a hot expert (balanced placement) are ordinary experts of several actors.

`forward(layer, rows, counts)`: `rows` [n, H] are the tokens of this actor's experts of
`layer`, expert after expert in the order its `ExpertShard` lists them, `counts[i]` rows for
the i-th. Returns the expert outputs [n, H] in the same order (not yet weighted: the engine
combines them with the routing weights) and the seconds spent computing, so the engine can
tell compute from dispatch overhead. Per-expert token counts are kept for `stats()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ExpertShard:
    """What one expert actor holds; sent once, when the engine starts it."""

    model: str  # local model directory (absolute: the actor's working directory differs)
    dtype: str  # torch dtype name of the weights, e.g. "float64"
    layers: dict  # model layer index -> (experts module path in the model, expert ids held, ascending)
    act_fn: object  # the experts' activation (`expert_checkpoint.portable_activation`)


class Experts:
    def __init__(self, shard: ExpertShard, num_threads: int = 1):
        import warnings

        import torch

        from tideflow.runtime.parallel.expert_checkpoint import ExpertReader
        from tideflow.models.expert_mlp import HeldExperts

        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        torch.set_num_threads(num_threads)
        dtype = getattr(torch, shard.dtype)
        reader = ExpertReader(shard.model)
        self.owned = {int(layer): [int(e) for e in experts] for layer, (_, experts) in shard.layers.items()}
        self.layers = {}  # model layer index -> HeldExperts of the owned experts
        for layer, (path, experts) in shard.layers.items():
            gate_up, down = reader.read(path, list(experts), dtype)
            self.layers[int(layer)] = HeldExperts(gate_up, down, shard.act_fn)
        self.tokens = {layer: np.zeros(len(e), dtype=np.int64) for layer, e in self.owned.items()}  # per owned expert
        self.calls = 0
        self.compute_s = 0.0

    def ready(self) -> bool:
        return True

    def forward(self, layer: int, rows: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, float]:
        import torch

        from tideflow.models.expert_mlp import expert_mlp

        start = time.perf_counter()
        held = self.layers[layer]
        x = torch.from_numpy(rows)
        out = torch.empty_like(x)
        bounds = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        with torch.inference_mode():
            for i in np.flatnonzero(counts):
                lo, hi = bounds[i], bounds[i + 1]
                out[lo:hi] = expert_mlp(held, int(i), x[lo:hi])
        self.tokens[layer] += counts
        self.calls += 1
        elapsed = time.perf_counter() - start
        self.compute_s += elapsed
        return out.numpy(), elapsed

    def stats(self) -> dict:
        """Per MoE layer, the experts held and the tokens each ran; forward calls and compute seconds."""
        return {
            "layers": [
                {"layer": layer, "experts": list(self.owned[layer]), "tokens": self.tokens[layer].tolist()}
                for layer in sorted(self.owned)
            ],
            "calls": self.calls,
            "compute_s": self.compute_s,
        }
