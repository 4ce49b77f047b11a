"""What recovery costs: graph throughput with and without checkpointing (side by side, one
run), and how long a killed decode replica takes to come back.

    tideflow bench recovery [--model DIR] [--kills 3] [--json out.json]

Throughput: the same seeded trace through the disaggregated graph deployed with
`recovery=False` and with recovery on (`--interval` seconds between checkpoints), alternating
`--rounds` times. Recovery: streams run through the graph while decode replica 0 is killed
(SIGKILL-like `ray.kill(no_restart=False)`) once every stream has output; per kill, the time
until the restarted replica answers (restored and replaying) and the longest pause any stream
saw across the kill, and the distribution of every inter-chunk gap of every stream of the round
(`gap_max_s`, `gap_p99_s`, over all kills): what a client sees of a kill. With request
migration (the default: decode has 2 replicas) the streams the killed replica held move to the
live one at once; without it (`--migration-limit 0`) they wait for the restart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time


def _trace(count: int, max_tokens: int, seed: int):
    import random

    from tideflow import SamplingParams

    rng = random.Random(seed)
    prompts = [{"prompt_token_ids": [rng.randrange(5, 500) for _ in range(rng.randrange(8, 96))]} for _ in range(count)]
    params = [SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True) for _ in range(count)]
    return prompts, params


def throughput(model: str, rounds: int, count: int, max_tokens: int, interval: float) -> dict:
    from tideflow.graphs.builtin import disaggregated

    prompts, params = _trace(count, max_tokens, seed=0)
    results: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(rounds):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):  # neither always goes first
            graph = disaggregated(model, prefill=1, decode=2, dtype="float32", name=f"bench-{mode}")
            kwargs = {"recovery": False} if mode == "off" else {"checkpoint_interval": interval}
            handle = graph.deploy(**kwargs)
            try:
                handle.generate(prompts[:2], params[:2])
                start = time.perf_counter()
                out = handle.generate(prompts, params)
                wall = time.perf_counter() - start
                status = handle.checkpoints()
            finally:
                handle.shutdown()
            tokens = sum(len(o.outputs[0].token_ids) for o in out)
            results[mode].append(tokens / wall)
            print(f"  recovery {mode:3s}: {tokens / wall:8.1f} tok/s  ({len(status.get('completed', []))} checkpoints)", flush=True)
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    return {"tok_s_off": off, "tok_s_on": on, "ratio_on_off": on / off, "runs": results}


def recovery_times(model: str, kills: int, count: int, max_tokens: int, migration_limit: int | None = None) -> dict:
    import ray

    from tideflow.graphs.builtin import disaggregated
    from tideflow.runtime.dataflow.executor import NAMESPACE

    prompts, params = _trace(count, max_tokens, seed=1)
    graph = disaggregated(model, prefill=1, decode=2, dtype="float32", name="bench-kill")
    handle = graph.deploy(checkpoint_interval=1.0, migration_limit=migration_limit)
    restart_s, pause_s, restore_s, parts, gaps, moved = [], [], [], [], [], []
    try:
        handle.generate(prompts[:2], params[:2])
        for k in range(kills):
            stamps: list[list[float]] = [[] for _ in prompts]

            async def one(i):
                async for _ in handle.submit(prompts[i], params[i]):
                    stamps[i].append(time.monotonic())

            async def run():
                tasks = [asyncio.ensure_future(one(i)) for i in range(len(prompts))]
                while sum(len(s) for s in stamps) < len(prompts) * 4:
                    await asyncio.sleep(0.01)
                actor = ray.get_actor("bench-kill/decode/0", namespace=NAMESPACE)
                t0, killed_at = time.monotonic(), time.time()
                ray.kill(actor, no_restart=False)
                await asyncio.sleep(0.2)
                await asyncio.to_thread(ray.get, actor.ready.remote())
                restart = time.monotonic() - t0
                stats = await asyncio.to_thread(ray.get, actor.stats.remote())
                await asyncio.gather(*tasks)
                return t0, restart, stats["restore_s"], startup_parts(stats["startup"], killed_at, restart)

            moved_before = handle.checkpoints()["migration"]["moved"]
            t0, restart, restore, part = asyncio.run(run())
            moved.append(handle.checkpoints()["migration"]["moved"] - moved_before)
            pause = max((b - a for s in stamps for a, b in zip(s, s[1:]) if a <= t0 <= b), default=0.0)
            round_gaps = stream_gaps(stamps)
            gaps += round_gaps
            restart_s.append(restart)
            pause_s.append(pause)
            restore_s.append(restore)
            parts.append(part)
            print(f"  kill {k + 1}: replica back after {restart:.2f} s (of which restore + log read {restore:.3f} s); "
                  f"longest stream pause {pause:.2f} s; inter-chunk gaps max {max(round_gaps, default=0):.3f} s, "
                  f"p99 {percentile(round_gaps, 99):.3f} s; {moved[-1]} request(s) moved to the live replica", flush=True)
            print("    " + ", ".join(f"{name} {value:.2f} s" for name, value in part.items()), flush=True)
    finally:
        handle.shutdown()
    return {"restart_s": restart_s, "pause_s": pause_s, "restore_s": restore_s, "parts": parts, "moved": moved,
            "restart_median_s": statistics.median(restart_s), "pause_median_s": statistics.median(pause_s),
            "restore_median_s": statistics.median(restore_s),
            "gap_max_s": max(gaps, default=0.0), "gap_p99_s": percentile(gaps, 99), "gap_p50_s": percentile(gaps, 50)}


def stream_gaps(stamps: list[list[float]]) -> list[float]:
    """Every gap between two consecutive chunks of the same stream (seconds)."""
    return [b - a for s in stamps for a, b in zip(s, s[1:])]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def startup_parts(startup: dict, killed_at: float, restart: float) -> dict:
    """Split a restart into: kill -> the new replica's worker process (0 when Ray had one
    prestarted), -> actor __init__ (worker bootstrap), the role's imports (torch, transformers),
    its construction (model load, KV cache), and the rest (restore, replay queued, `ready`)."""
    nan = float("nan")
    begun = max(startup["process_at"], killed_at) if startup.get("process_at") else nan
    parts = {"spawn": begun - killed_at, "worker start": startup["init_at"] - begun,
             "role imports": startup["role_import_s"], "model load": startup["role_init_s"]}
    return {**parts, "restore + rest": restart - (startup["init_at"] - killed_at) - parts["role imports"] - parts["model load"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tideflow bench recovery", description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--model", default=None, help="model directory (default: a tiny random Llama)")
    parser.add_argument("--kills", type=int, default=3, help="decode replica kills, one after another")
    parser.add_argument("--rounds", type=int, default=1, help="throughput rounds, each deploying off and on")
    parser.add_argument("--requests", type=int, default=24, help="requests of each throughput round")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per throughput request")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between checkpoints in the 'on' runs")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    parser.add_argument("--skip-throughput", action="store_true", help="measure only the kills")
    parser.add_argument("--migration-limit", type=int, default=None,
                        help="deploy's migration_limit for the kills (0: no request migration; default: the stage's)")
    args = parser.parse_args(argv)
    model = args.model
    if model is None:
        import tempfile

        from tideflow.testing.tiny_models import write_tiny_model

        model = str(write_tiny_model("llama", tempfile.mkdtemp(prefix="tideflow-bench-"), seed=0))
    import ray

    ray.init(namespace="tideflow", include_dashboard=False, log_to_driver=False, num_cpus=8)
    tp = None
    if not args.skip_throughput:
        print("throughput, checkpointing off vs on:")
        tp = throughput(model, args.rounds, args.requests, args.max_tokens, args.interval)
        print(f"  ratio on/off: {tp['ratio_on_off']:.3f}")
    print("recovery after killing decode replica 0:")
    # long outputs, so that the streams are still running when the replica is killed
    rec = recovery_times(model, args.kills, args.requests // 2, args.max_tokens * 8, args.migration_limit)
    print(f"  median: replica back {rec['restart_median_s']:.2f} s, stream pause {rec['pause_median_s']:.2f} s")
    print(f"  inter-chunk gaps over all kills: max {rec['gap_max_s']:.3f} s, p99 {rec['gap_p99_s']:.3f} s, "
          f"p50 {rec['gap_p50_s']:.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"throughput": tp, "recovery": rec}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
