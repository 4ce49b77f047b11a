"""`tideflow bench graph --graph moe`: the moe graph (experts on expert actors) against the
colocated engine, on the same MoE model, trace and cores.

Both run the seeded `mixed` trace greedily, every request generating exactly its
`max_tokens`, submitted all at once, after a two-request warm-up; deployment is outside the
timed run. Reported per system: output tokens/s, and for the moe graph the engine's view of
each MoE layer call: wall time of the dispatch, the slowest expert actor's compute time, and
the difference, which is the dispatch overhead (permute, Ray calls and transfers, combine).

On a small CPU machine the expert actors share the engine's cores, so expert parallelism
cannot win there: this measures what dispatching costs, not what spreading experts over
more devices gains.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

# A Mixtral-shaped model (8 experts, top-2) that a 2-core machine runs in seconds per trace.
MOE_MODEL_NAME = "mixtral-moe-8x"
MOE_MODEL_CONFIG = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 2048,
}


def moe_bench_model(path: str | os.PathLike | None = None) -> Path:
    """Write the MoE benchmark model (random weights, float32) unless it is already there."""
    from tideflow.testing.tiny_models import write_tiny_model

    path = Path(path or Path(tempfile.gettempdir()) / "tideflow-bench" / MOE_MODEL_NAME)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if all(config.get(k) == v for k, v in MOE_MODEL_CONFIG.items()):
            return path
    except (OSError, ValueError):
        pass
    return write_tiny_model("mixtral", path, seed=0, **MOE_MODEL_CONFIG)


def _run(graph, trace) -> tuple[float, list, dict]:
    from tideflow import SamplingParams

    handle = graph.deploy(recovery=False)
    try:
        prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in trace]
        params = [SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True) for r in trace]
        handle.generate(prompts[:2], params[:2])
        before = handle.stats()["engine"][0]
        start = time.time()
        outputs = handle.generate(prompts, params)
        wall = time.time() - start
        after = handle.stats()["engine"][0]
    finally:
        handle.shutdown()
    return wall, [o.outputs[0].token_ids for o in outputs], _timed_dispatch(before, after)


def _timed_dispatch(before: dict, after: dict) -> dict:
    """The dispatch cost of the timed run alone (the stats are cumulative since deployment)."""
    if "expert_dispatches" not in after:
        return {}
    calls = after["expert_dispatches"] - before["expert_dispatches"]

    def total_ms(key: str) -> float:
        return after[key] * after["expert_dispatches"] - before[key] * before["expert_dispatches"]

    per = {k: total_ms(f"expert_{k}_ms_per_layer") / max(calls, 1) for k in ("dispatch", "compute", "overhead")}
    return {
        "layer_dispatches": calls,
        "actor_calls_per_dispatch": (after["expert_actor_calls"] - before["expert_actor_calls"]) / max(calls, 1),
        "dispatch_ms_per_layer": per["dispatch"],
        "compute_ms_per_layer": per["compute"],
        "overhead_ms_per_layer": per["overhead"],
        "expert_tokens": after["expert_tokens"],
    }


def run_moe_bench(
    model_dir: str, *, expert_actors: int = 2, num_requests: int = 32, seed: int = 0, dtype: str = "float32",
    max_prompt: int = 256, max_output: int = 64, json_path: str | None = None,
) -> dict:
    import ray

    from tideflow.bench.workloads import mixed_trace
    from tideflow.graphs.builtin import colocated, moe

    trace = mixed_trace(num_requests, seed, vocab_size=512, max_prompt=max_prompt, max_output=max_output)
    cores = os.cpu_count() or 2
    if not ray.is_initialized():
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    # both engines run torch on every core; the expert actors (one thread each) share them
    builders = {
        "colocated": lambda: colocated(model_dir, dtype=dtype, num_cpus=cores, num_threads=cores),
        f"moe-{expert_actors}": lambda: moe(
            model_dir, expert_actors=expert_actors, dtype=dtype, num_cpus=cores / 2, expert_cpus=cores / 2 / expert_actors,
            num_threads=cores,
        ),
    }
    results, tokens = {}, {}
    for name, build in builders.items():
        wall, tokens[name], dispatch = _run(build(), trace)
        out_tokens = sum(len(t) for t in tokens[name])
        results[name] = {"wall_s": wall, "output_tokens": out_tokens, "output_tok_s": out_tokens / wall, **dispatch}
    base = results["colocated"]
    for name, r in results.items():
        r["ratio_vs_colocated"] = r["output_tok_s"] / base["output_tok_s"]
        r["same_tokens_as_colocated"] = tokens[name] == tokens["colocated"]
    result = {
        "benchmark": "graph-moe",
        "model": model_dir,
        "expert_actors": expert_actors,
        "num_requests": num_requests,
        "seed": seed,
        "max_prompt": max_prompt,
        "max_output": max_output,
        "cores": cores,
        "systems": results,
    }
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


def format_moe_table(result: dict) -> str:
    head = f"{'system':<12}{'tok/s':>9}{'vs colocated':>14}{'same tokens':>13}{'dispatch ms/layer':>19}{'compute':>9}{'overhead':>10}"
    lines = [head, "-" * len(head)]
    for name, r in result["systems"].items():
        d = (f"{r['dispatch_ms_per_layer']:>19.2f}{r['compute_ms_per_layer']:>9.2f}{r['overhead_ms_per_layer']:>10.2f}"
             if "dispatch_ms_per_layer" in r else f"{'-':>19}{'-':>9}{'-':>10}")
        lines.append(f"{name:<12}{r['output_tok_s']:>9.1f}{r['ratio_vs_colocated']:>13.2f}x{str(r['same_tokens_as_colocated']):>13}{d}")
    return "\n".join(lines)
