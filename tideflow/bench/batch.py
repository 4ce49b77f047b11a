"""Batch throughput: the `tideflow batch` path against the offline engine on the same rows.

Rows are the seeded `mixed` trace: prompts as token ids (a `list<int32>` column, which the
batch actors slice out of its Arrow buffers) and each row's output length in a `max_tokens`
column; greedy with EOS ignored, so both systems generate exactly the same tokens. In one
run, first the offline engine (`LLM.generate` over every row at once; model loaded and warmed
up outside its time), then the batch job end to end (`run_job`: actor start-up and model
load, reading, generating and committing parquet all inside its time). Reported: output
tokens/s of each, the ratio batch / offline, and whether every row's tokens are equal.
Each engine gets the same torch threads (`--threads`, default cores / concurrency: the
offline engine's, and each batch actor's CPUs); Ray gets one logical CPU more than the
cores, for the light read tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tideflow.batch.run import DEFAULT_BATCHES_PER_ACTOR
from tideflow.bench.bench_model import bench_model, default_model_dir
from tideflow.bench.workloads import mixed_trace, trace_stats

DEFAULT_NUM_REQUESTS = 2000


def _trace_table(trace):
    import pyarrow as pa

    return pa.table({
        "prompt_token_ids": pa.array([r.prompt_token_ids for r in trace], pa.list_(pa.int32())),
        "max_tokens": pa.array([r.max_tokens for r in trace], pa.int32()),
    })


def _run_offline(model_dir: str, trace, engine_options: dict, threads: int) -> tuple[float, float, list[list[int]]]:
    """(load s, generate s, tokens per row) of `LLM.generate` over the whole trace."""
    import torch

    from tideflow import LLM, SamplingParams

    torch.set_num_threads(threads)
    start = time.perf_counter()
    llm = LLM(model_dir, **engine_options)
    load = time.perf_counter() - start
    warm = mixed_trace(2, 1, vocab_size=llm.engine.vocab_size, max_prompt=32, min_output=4, max_output=4)
    params = [SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True) for r in warm + trace]
    llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in warm], params[:2], use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in trace], params[2:], use_tqdm=False)
    wall = time.perf_counter() - start
    return load, wall, [o.outputs[0].token_ids for o in outputs]


def _run_batch(model_dir: str, trace, engine_options: dict, work: Path, *, concurrency: int, batch_size: int,
               batches_per_actor: int, num_cpus: float) -> tuple[object, list[list[int] | None]]:
    import pyarrow.parquet as pq

    from tideflow import SamplingParams
    from tideflow.batch import run_job

    pq.write_table(_trace_table(trace), work / "trace.parquet")
    summary = run_job(
        work / "trace.parquet", work / "out", model_dir, prompt_column="prompt_token_ids", max_tokens_column="max_tokens",
        sampling_params=SamplingParams(temperature=0, ignore_eos=True, max_tokens=None), concurrency=concurrency,
        batch_size=batch_size, batches_per_actor=batches_per_actor, engine_options=engine_options, num_cpus=num_cpus,
    )
    rows = pq.read_table(work / "out", columns=["row_id", "generated_token_ids"]).to_pylist()
    tokens: list[list[int] | None] = [None] * len(trace)
    for row in rows:
        tokens[int(row["row_id"].rsplit(":", 1)[1])] = row["generated_token_ids"]
    return summary, tokens


def run_batch_bench(
    model_dir: str, *, num_requests: int = DEFAULT_NUM_REQUESTS, seed: int = 0, dtype: str = "float32",
    max_prompt: int = 1024, max_output: int = 512, concurrency: int = 1, batch_size: int = 64,
    batches_per_actor: int = DEFAULT_BATCHES_PER_ACTOR, threads: int | None = None, json_path: str | None = None,
) -> dict:
    """`threads`: torch threads of the offline engine and CPUs of each batch actor (Ray sets
    the actor's OMP_NUM_THREADS from them); default: the machine's cores over `concurrency`."""
    import ray

    cores = os.cpu_count() or 2
    if not ray.is_initialized():  # one logical CPU beyond the cores: the light read / re-block tasks
        ray.init(num_cpus=cores + 1, include_dashboard=False, log_to_driver=False)
    cpus = max(ray.cluster_resources().get("CPU", cores) - 1, 1)
    threads = threads or max(int(min(cores, cpus) // concurrency), 1)
    engine_options = {"dtype": dtype}
    trace = mixed_trace(num_requests, seed, vocab_size=_vocab_size(model_dir), max_prompt=max_prompt, max_output=max_output)
    load_s, offline_s, offline_tokens = _run_offline(model_dir, trace, engine_options, threads)
    with tempfile.TemporaryDirectory(prefix="tideflow-bench-batch-") as tmp:
        summary, batch_tokens = _run_batch(model_dir, trace, engine_options, Path(tmp), concurrency=concurrency,
                                           batch_size=batch_size, batches_per_actor=batches_per_actor,
                                           num_cpus=threads)
    output_tokens = sum(r.max_tokens for r in trace)
    offline = {"wall_s": offline_s, "load_s": load_s, "threads": threads, "output_tokens": output_tokens, "output_tok_s": output_tokens / offline_s}
    batch = {
        "wall_s": summary.wall_s, "output_tokens": summary.generated_tokens, "output_tok_s": summary.tokens_per_s,
        "rows": summary.rows, "errors": summary.errors, "concurrency": concurrency, "batch_size": batch_size,
        "batches_per_actor": batches_per_actor, "threads_per_actor": threads,
    }
    result = {
        "benchmark": "batch",
        "model": model_dir,
        "trace": {"name": "mixed", "seed": seed, "max_prompt": max_prompt, "max_output": max_output,
                  **{k: v for k, v in trace_stats(trace).items() if k in ("num_requests", "prompt_tokens", "output_tokens")}},
        "systems": {"offline": offline, "batch": batch},
        "ratio_batch_vs_offline": batch["output_tok_s"] / offline["output_tok_s"],
        "same_tokens": batch_tokens == offline_tokens,
    }
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _vocab_size(model_dir: str) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir).get_text_config().vocab_size


def format_table(result: dict) -> str:
    t = result["trace"]
    head = f"{'system':<10}{'tok/s':>10}{'wall s':>10}{'tokens':>10}"
    lines = [
        f"mixed trace: {t['num_requests']} rows, {t['prompt_tokens']} prompt / {t['output_tokens']} output tokens",
        head, "-" * len(head),
    ]
    for name, r in result["systems"].items():
        lines.append(f"{name:<10}{r['output_tok_s']:>10.1f}{r['wall_s']:>10.1f}{r['output_tokens']:>10}")
    lines.append(f"batch / offline: {result['ratio_batch_vs_offline']:.2f}x; same tokens: {result['same_tokens']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tideflow bench batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the ~24M-parameter benchmark Llama)")
    p.add_argument("--num-requests", type=int, default=DEFAULT_NUM_REQUESTS, help="rows of the mixed trace")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-prompt", type=int, default=1024)
    p.add_argument("--max-output", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=1, help="batch actors (they share the machine's cores)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per actor call")
    p.add_argument("--batches-per-actor", type=int, default=DEFAULT_BATCHES_PER_ACTOR, help="actor calls in flight, sharing its engine (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per engine (default: cores / concurrency)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", dest="json_path", default=None)
    args = p.parse_args(argv)
    model = args.model or str(bench_model(default_model_dir()))
    result = run_batch_bench(
        model, num_requests=args.num_requests, seed=args.seed, dtype=args.dtype, max_prompt=args.max_prompt,
        max_output=args.max_output, concurrency=args.concurrency, batch_size=args.batch_size,
        batches_per_actor=args.batches_per_actor, threads=args.threads, json_path=args.json_path,
    )
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
