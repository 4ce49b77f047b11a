"""Graph throughput and latency: the in-process engine against the built-in graphs on Ray.

All systems run the same seeded `mixed` trace on the same weights, greedy, each request
generating exactly its `max_tokens`, submitted all at once. Reported per system: output
tokens/s, median TTFT and TPOT, and each ratio to the in-process engine. For the graphs,
TTFT and TPOT are stamped at the graph's sink (the collector) as outputs arrive; for the
engine, when its step produces them. Graph deployment (actor start, model load) is outside
the timed run; each system first warms up on two short requests.

On a 2-core machine the disaggregated graph's four model actors share the same two cores,
so it measures the cost of the dataflow, not the benefit of disaggregation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from tideflow.bench.bench_model import bench_model, default_model_dir
from tideflow.bench.workloads import mixed_trace

DEFAULT_SYSTEMS = ("engine", "colocated", "disaggregated")


def _latencies(records: list[tuple[float, float, float, int]]) -> dict:
    """records: (arrival, first token, finished, output tokens) per request."""
    ttft = [f - a for a, f, _, _ in records]
    tpot = [(e - f) / (n - 1) for _, f, e, n in records if n > 1]
    return {
        "ttft_median_ms": 1000 * statistics.median(ttft),
        "tpot_median_ms": 1000 * statistics.median(tpot) if tpot else None,
    }


def _run_engine(model_dir: str, trace, dtype: str) -> tuple[float, list, list]:
    from tideflow import SamplingParams
    from tideflow.config import engine_config
    from tideflow.runtime.engine.driver import EngineDriver
    from tideflow.runtime.engine.engine import Engine

    engine = Engine(engine_config(model_dir, dtype=dtype), detokenize=True)
    driver = EngineDriver(engine, keep_outputs=True)

    def run(requests):
        start = time.time()  # request metrics are wall-clock times
        for i, r in enumerate(requests):
            engine.add_request(str(i), r.prompt_token_ids, SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True))
        done = {}
        while engine.has_unfinished():
            for rid in driver.step().finished_requests:
                out = driver.pop_output(rid)
                tokens = out.outputs[0].token_ids
                done[rid] = (start, out.metrics["first_token_time"], out.metrics["finished_time"], len(tokens), tokens)
        return time.time() - start, [done[str(i)] for i in range(len(requests))]

    run(trace[:2])
    wall, done = run(trace)
    return wall, [d[:4] for d in done], [d[4] for d in done]


def _run_graph(graph, trace) -> tuple[float, list, list]:
    from tideflow import SamplingParams

    handle = graph.deploy()
    try:
        prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in trace]
        params = [SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True) for r in trace]
        handle.generate(prompts[:2], params[:2])
        start = time.time()
        outputs = handle.generate(prompts, params)
        wall = time.time() - start
    finally:
        handle.shutdown()
    records = [
        (o.metrics["arrival_time"], o.metrics["first_token_time"], o.metrics["finished_time"], len(o.outputs[0].token_ids))
        for o in outputs
    ]
    return wall, records, [o.outputs[0].token_ids for o in outputs]


def run_graph_bench(
    model_dir: str, *, num_requests: int = 64, seed: int = 0, systems=DEFAULT_SYSTEMS, dtype: str = "float32",
    max_prompt: int = 512, max_output: int = 256, json_path: str | None = None,
) -> dict:
    import os

    import ray

    from tideflow.graphs.builtin import colocated, disaggregated

    trace = mixed_trace(num_requests, seed, vocab_size=512, max_prompt=max_prompt, max_output=max_output)
    cores = os.cpu_count() or 2
    if not ray.is_initialized():
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    builders = {
        "colocated": lambda: colocated(model_dir, dtype=dtype, num_cpus=cores),
        "disaggregated": lambda: disaggregated(
            model_dir, prefill=2, decode=2, dtype=dtype, prefill_cpus=cores / 4, decode_cpus=cores / 4
        ),
    }
    results, tokens = {}, {}
    for name in systems:
        if name == "engine":
            wall, records, tokens[name] = _run_engine(model_dir, trace, dtype)
        else:
            wall, records, tokens[name] = _run_graph(builders[name](), trace)
        out_tokens = sum(r[3] for r in records)
        results[name] = {"wall_s": wall, "output_tokens": out_tokens, "output_tok_s": out_tokens / wall, **_latencies(records)}
    base = results.get("engine")
    for name, r in results.items():
        r["ratio_vs_engine"] = r["output_tok_s"] / base["output_tok_s"] if base else None
        r["same_tokens_as_engine"] = tokens[name] == tokens["engine"] if base else None
    result = {
        "benchmark": "graph",
        "model": model_dir,
        "num_requests": num_requests,
        "seed": seed,
        "max_prompt": max_prompt,
        "max_output": max_output,
        "systems": results,
    }
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


def format_table(result: dict) -> str:
    head = f"{'system':<15}{'tok/s':>10}{'vs engine':>11}{'TTFT p50 ms':>13}{'TPOT p50 ms':>13}{'same tokens':>13}"
    lines = [head, "-" * len(head)]
    for name, r in result["systems"].items():
        tpot = "-" if r["tpot_median_ms"] is None else f"{r['tpot_median_ms']:.1f}"
        lines.append(
            f"{name:<15}{r['output_tok_s']:>10.1f}{r['ratio_vs_engine']:>10.2f}x{r['ttft_median_ms']:>13.0f}{tpot:>13}"
            f"{str(r['same_tokens_as_engine']):>13}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tideflow bench graph", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the ~24M-parameter benchmark Llama)")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS))
    p.add_argument("--max-prompt", type=int, default=512)
    p.add_argument("--max-output", type=int, default=256)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", dest="json_path", default=None)
    p.add_argument("--graph", default=None, help="moe: the moe graph against the colocated engine on a MoE model "
                   "(tideflow.bench.moe_graph; defaults then: 32 requests, prompts <= 256, outputs <= 64); "
                   "multimodal: the encoder pool graph against colocated on a tiny LLaVA (tideflow.bench.multimodal_graph; "
                   "32 one-image requests, outputs 16-64)")
    p.add_argument("--expert-actors", type=int, default=2, help="--graph moe: expert actors")
    p.add_argument("--encoders", type=int, default=2, help="--graph multimodal: encoder replicas")
    p.add_argument("--distinct-images", type=int, default=8, help="--graph multimodal: the image pool requests draw from")
    args = p.parse_args(argv)
    if args.graph == "moe":
        return _moe_main(args, argv or [])
    if args.graph == "multimodal":
        return _multimodal_main(args, argv or [])
    if args.graph is not None:
        p.error(f"--graph: expected moe or multimodal, got {args.graph!r}")
    model = args.model or str(bench_model(default_model_dir()))
    result = run_graph_bench(
        model, num_requests=args.num_requests, seed=args.seed, systems=tuple(args.systems.split(",")),
        dtype=args.dtype, max_prompt=args.max_prompt, max_output=args.max_output, json_path=args.json_path,
    )
    print(format_table(result))
    return 0


def _moe_main(args, argv: list[str]) -> int:
    from tideflow.bench.moe_graph import format_moe_table, moe_bench_model, run_moe_bench

    given = {a.split("=")[0] for a in argv}  # the trace defaults differ from the dense benchmark's
    sizes = {k: getattr(args, k) for k, flag in (("num_requests", "--num-requests"), ("max_prompt", "--max-prompt"),
                                                 ("max_output", "--max-output")) if flag in given}
    result = run_moe_bench(
        args.model or str(moe_bench_model()), expert_actors=args.expert_actors, seed=args.seed, dtype=args.dtype,
        json_path=args.json_path, **sizes,
    )
    print(format_moe_table(result))
    return 0


def _multimodal_main(args, argv: list[str]) -> int:
    from tideflow.bench.multimodal_graph import format_multimodal_table, multimodal_bench_model, run_multimodal_bench

    given = {a.split("=")[0] for a in argv}
    sizes = {k: getattr(args, k) for k, flag in (("num_requests", "--num-requests"), ("max_output", "--max-output"))
             if flag in given}
    result = run_multimodal_bench(
        args.model or str(multimodal_bench_model()), encoders=args.encoders, distinct_images=args.distinct_images,
        seed=args.seed, dtype=args.dtype, json_path=args.json_path, **sizes,
    )
    print(format_multimodal_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
