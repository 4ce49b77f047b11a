"""Expert parallelism on the engine side: start the expert actors, then dispatch each MoE
layer's tokens to them.

`start_expert_parallel(core, config)` is called once on a built engine core (by
`tideflow.actors.engine_role.build_engine`, when a stage's options ask for `expert_actors`,
which then hands the result to `core.attach_experts`):

1. with `expert_placement="balanced"` and no recorded `expert_load`, a warm-up run on the
   engine's own (still complete) experts counts the tokens routed to each expert;
2. places the experts (`tideflow.runtime.parallel.expert_placement`) and starts one `Experts` actor
   per slot (`tideflow.runtime.parallel.experts_actor`); each loads only the experts it holds;
3. binds every experts module of the model to a `_LayerDispatch` through transformers'
   `ExpertsInterface` (`tideflow.models.experts.bind_dispatch`) and frees the engine's copy
   of the expert weights.

From then on the engine runs as before: attention and routing (and any shared expert) in
its own process; in each MoE layer the experts function permutes the (token, slot)
assignments by expert, sends every actor the rows of the experts it holds in ONE call
(replicas of an expert each take a contiguous part of its rows), waits for all of them,
and combines the outputs with the routing weights. One call per actor per MoE layer per
step, numpy arrays over Ray; actors with no rows in a step are not called.

The actors are owned by the engine's process (fate-shared: they die with it, and a
restarted replica starts fresh ones), so nothing looks them up by name. They are released
when the `ExpertParallel` is closed or collected.
"""

from __future__ import annotations

import os
import time
import weakref

import numpy as np
import torch

from tideflow.config import ExpertParallelConfig
from tideflow.kernels.moe import combine, permute
from tideflow.runtime.parallel.placement import wait_placed
from tideflow.runtime.parallel.expert_placement import (
    ExpertPlacement,
    balanced_placement,
    check_expert_actors,
    check_load,
    even_placement,
)

WARMUP_PROMPT_TOKENS = 64  # tokens per warm-up prompt
EXPERT_PLACEMENT_TIMEOUT_S = 30.0  # how long an expert actor may wait for its CPUs before the engine gives up


class ExpertParallel:
    """The expert actors of one engine, their placement, and what dispatch has cost so far."""

    def __init__(self, actors: list, placement: ExpertPlacement, load_source: str, placed_by=None):
        self.actors = actors  # Ray handles, actor id -> handle
        self.placement = placement
        self.load_source = load_source  # what "balanced" placed by: "trace" | "warmup" | "" (even)
        self.placed_by = placed_by  # the [moe layer][expert] token counts "balanced" placed by (None: even)
        num_layers, num_experts = len(placement.layers), placement.num_experts
        self.tokens = np.zeros((num_layers, num_experts), dtype=np.int64)  # (token, slot) assignments per layer, expert
        self.calls = 0  # layer dispatches
        self.actor_calls = 0  # actor calls over all dispatches
        self.dispatch_s = 0.0  # wall seconds inside the experts function
        self.compute_s = 0.0  # per dispatch, the slowest actor's compute seconds, summed
        self.routes = [self._routes(p) for p in range(num_layers)]
        self._release = weakref.finalize(self, _kill, list(actors))

    def _routes(self, position: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per actor, at one MoE layer: (experts it holds, which replica it is of each, replicas of each)."""
        held: list[list[tuple[int, int, int]]] = [[] for _ in range(self.placement.num_actors)]
        for e, actors in enumerate(self.placement.holders[position]):
            for replica, actor in enumerate(actors):
                held[actor].append((e, replica, len(actors)))
        return [tuple(np.asarray([h[i] for h in mine], dtype=np.int64) for i in range(3)) for mine in held]

    def dispatch(self, position: int, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        """The experts of MoE layer `position` over hidden [T, H]: [T, H]."""
        import ray

        start = time.perf_counter()
        layer = self.placement.layers[position]
        rows, plan = permute(hidden, top_k_index, self.placement.num_experts)
        offsets = plan.offsets.cpu().numpy()
        counts = np.diff(offsets)
        self.tokens[position] += counts
        host = rows.cpu().numpy()
        sent = []
        for actor, (experts, replica, replicas) in enumerate(self.routes[position]):
            n = counts[experts]
            lo = offsets[experts] + n * replica // replicas
            sizes = offsets[experts] + n * (replica + 1) // replicas - lo
            if not sizes.any():
                continue
            index = _ranges(lo, sizes)
            sent.append((index, self.actors[actor].forward.remote(layer, host[index], sizes)))
        out = np.empty_like(host)  # filled by the actors' results (read-only arrays: copied in by numpy)
        slowest = 0.0
        for (index, _), (result, seconds) in zip(sent, ray.get([ref for _, ref in sent])):
            out[index] = result
            slowest = max(slowest, seconds)
        combined = combine(torch.from_numpy(out).to(rows.device), plan, top_k_weights)
        self.calls += 1
        self.actor_calls += len(sent)
        self.compute_s += slowest
        self.dispatch_s += time.perf_counter() - start
        return combined

    def stats(self) -> dict:
        """Per-expert token counts (`expert_tokens`: [moe layer][expert], usable as a recorded
        `expert_load`), the placement, and the dispatch cost per MoE layer call."""
        calls = max(self.calls, 1)
        return {
            "expert_actors": self.placement.num_actors,
            "expert_layers": list(self.placement.layers),
            "expert_placement": self.placement.to_lists(),
            "expert_load_source": self.load_source,
            "expert_placed_by": self.placed_by,
            "expert_tokens": self.tokens.tolist(),
            "expert_dispatches": self.calls,
            "expert_actor_calls": self.actor_calls,
            "expert_dispatch_ms_per_layer": 1000 * self.dispatch_s / calls,
            "expert_compute_ms_per_layer": 1000 * self.compute_s / calls,
            "expert_overhead_ms_per_layer": 1000 * (self.dispatch_s - self.compute_s) / calls,
        }

    def actor_stats(self) -> list[dict]:
        """Each actor's own view: experts held and tokens run per layer, calls, compute seconds."""
        import ray

        return ray.get([a.stats.remote() for a in self.actors])

    def close(self) -> None:
        """Stop the expert actors (also done when this object is collected)."""
        self._release()


class _LayerDispatch:
    """The dispatch callable bound on one experts module: which layer it is, and where to send."""

    __slots__ = ("parallel", "position")

    def __init__(self, parallel: ExpertParallel, position: int):
        self.parallel = parallel
        self.position = position

    def __call__(self, hidden, top_k_index, top_k_weights):
        return self.parallel.dispatch(self.position, hidden, top_k_index, top_k_weights)


class _CountingExperts:
    """The in-process experts of one layer, counting the tokens routed to each expert (warm-up)."""

    __slots__ = ("module", "counts")

    def __init__(self, module, counts: np.ndarray):
        self.module = module
        self.counts = counts

    def __call__(self, hidden, top_k_index, top_k_weights):
        from tideflow.models.experts import experts_forward

        self.counts += np.bincount(top_k_index.reshape(-1).cpu().numpy(), minlength=len(self.counts))
        return experts_forward(self.module, hidden, top_k_index, top_k_weights)


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The concatenation of arange(s, s + n) for each (s, n)."""
    total = int(sizes.sum())
    ends = np.cumsum(sizes)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - sizes), sizes)


def _kill(actors) -> None:
    import ray

    if ray.is_initialized():
        for a in actors:
            ray.kill(a)


def start_expert_parallel(core, config: ExpertParallelConfig) -> ExpertParallel:
    """Place the experts of `core`'s model, start the expert actors and route every MoE layer
    through them (see the module docstring). Raises ValueError naming `expert_actors` for a
    dense model or a count outside [1, experts per layer]."""
    import ray

    from tideflow.runtime.parallel.experts_actor import Experts
    from tideflow.runtime.parallel.expert_checkpoint import check_supported, expert_modules
    from tideflow.models.experts import bind_dispatch
    from tideflow.models.loader import num_routed_experts

    modules = expert_modules(core.model)
    num_experts = num_routed_experts(core.hf_config) if modules else 0
    check_expert_actors(config.actors, num_experts)
    if core.config.parallel.tensor_parallel_size > 1:
        raise ValueError("expert_actors: tensor_parallel_size > 1 and expert actors cannot be combined yet")
    for path, module in modules.values():
        check_supported(path, module)
    layers = list(modules)
    load, source = None, ""
    if config.placement == "even":
        placement = even_placement(layers, num_experts, config.actors)
    else:
        if config.load is not None:
            load, source = [list(r) for r in check_load(config.load, len(layers), num_experts)], "trace"
        else:
            counts = np.zeros((len(layers), num_experts), dtype=np.int64)
            bind_dispatch(core.model, {m: _CountingExperts(m, counts[p]) for p, (_, m) in enumerate(modules.values())})
            _warmup(core, config.warmup_tokens)
            load, source = counts.tolist(), "warmup"
        placement = balanced_placement(layers, load, config.actors)

    if not ray.is_initialized():
        ray.init(namespace="tideflow")
    remote = ray.remote(Experts).options(num_cpus=config.num_cpus, max_concurrency=2)
    actors = [remote.remote(shard, config.num_threads) for shard in expert_shards(core, modules, placement)]
    parallel = ExpertParallel(actors, placement, source, load)
    # surfaces a failed load, and never waits without bound for CPUs another actor holds;
    # `parallel` kills the actors if it raises
    wait_placed([a.ready.remote() for a in actors], actors, [f"expert actor {i} of {len(actors)}" for i in range(len(actors))],
                [{"CPU": config.num_cpus}] * len(actors), EXPERT_PLACEMENT_TIMEOUT_S)
    bind_dispatch(core.model, {m: _LayerDispatch(parallel, p) for p, (_, m) in enumerate(modules.values())})
    for _, module in modules.values():  # the engine no longer runs experts: free its copy
        empty = torch.nn.Parameter(module.gate_up_proj.new_empty(0), requires_grad=False)
        module.gate_up_proj, module.down_proj = empty, torch.nn.Parameter(module.down_proj.new_empty(0), requires_grad=False)
    return parallel


def expert_shards(core, modules: dict, placement: ExpertPlacement) -> list:
    """What each expert actor holds under `placement` (`modules`: `expert_modules(core.model)`)."""
    from tideflow.runtime.parallel.experts_actor import ExpertShard
    from tideflow.runtime.parallel.expert_checkpoint import portable_activation

    model_dir = os.path.abspath(os.path.expanduser(core.config.model.model))  # the actors' working directory is not ours
    dtype = str(next(core.model.parameters()).dtype).removeprefix("torch.")
    act_fn = portable_activation(next(iter(modules.values()))[1].act_fn)
    return [
        ExpertShard(model_dir, dtype, {layer: (modules[layer][0], tuple(experts)) for layer, experts in
                                       placement.experts_of(actor).items()}, act_fn)
        for actor in range(placement.num_actors)
    ]


def _warmup(core, tokens: int) -> None:
    """Run seeded random prompts of `tokens` tokens in all through `core` (one output token
    each), so that the bound counting experts see how the model routes. A proxy for real
    traffic: a recorded `expert_load` places better."""
    from tideflow.runtime.engine.driver import EngineDriver
    from tideflow.sampling_params import SamplingParams

    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0, max_tokens=1, seed=0, ignore_eos=True)
    length = min(WARMUP_PROMPT_TOKENS, core.max_model_len - 1)
    ids = []
    for i in range(max(1, -(-tokens // length))):
        rid = f"__expert_warmup_{i}"
        core.add_request(rid, rng.integers(0, core.vocab_size, length).tolist(), params)
        ids.append(rid)
    EngineDriver(core, keep_outputs=True).run(ids)
