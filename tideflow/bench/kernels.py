"""`tideflow bench kernels`: every kernel against its torch reference on the same inputs.

Each kernel module declares its benchmark shapes in `bench_cases()`. Kernel and reference run
alternately (so machine noise hits both alike); the table shows medians and the ratio
reference / kernel. `--e2e N` also runs the engine on the `mixed` trace with `kernel_backend`
"auto" and "torch", alternating, and reports output tokens/s of each. On a CUDA machine the
decode kernel's achieved bandwidth is reported against the device's measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time

KERNEL_MODULES = (
    "tideflow.kernels.paged_decode",
    "tideflow.kernels.paged_prefill",
    "tideflow.kernels.cache_write",
    "tideflow.kernels.moe",
    "tideflow.kernels.sampling",
    "tideflow.kernels.arrow_pack",
)


def time_pair(kernel, reference, repeats: int) -> tuple[float, float]:
    """Median seconds of each, after one warm-up call each (JIT compilation, caches)."""
    kernel(), reference()
    k_times, r_times = [], []
    for _ in range(repeats):
        for fn, times in ((kernel, k_times), (reference, r_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(k_times), statistics.median(r_times)


def run_kernels(repeats: int = 7, only: str | None = None) -> list[dict]:
    rows = []
    for name in KERNEL_MODULES:
        for case, kernel, reference in importlib.import_module(name).bench_cases():
            if only and only not in case:
                continue
            k, r = time_pair(kernel, reference, repeats)
            rows.append({"kernel": case, "kernel_ms": k * 1e3, "torch_ms": r * 1e3, "speedup": r / k})
    return rows


def run_e2e(num_requests: int, repeats: int = 1, model: str | None = None) -> dict:
    """Engine output tokens/s on the mixed trace with tideflow's kernels and with the references.
    `model` defaults to the benchmark model, written on first use."""
    from transformers import AutoConfig

    from tideflow import LLM, SamplingParams
    from tideflow.config import KERNEL_BACKENDS
    from tideflow.bench.bench_model import bench_model, default_model_dir
    from tideflow.bench.workloads import mixed_trace

    model = model or str(bench_model(default_model_dir()))
    config = AutoConfig.from_pretrained(model)
    context = config.max_position_embeddings  # the trace's longest request must fit
    trace = mixed_trace(
        num_requests, seed=0, vocab_size=config.vocab_size,
        max_prompt=min(1024, context // 2), max_output=min(512, context // 4),
    )
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in trace]
    params = [SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True) for r in trace]
    engines = {b: LLM(model, dtype="float32", kernel_backend=b) for b in KERNEL_BACKENDS}
    for llm in engines.values():  # warm up: JIT, allocator
        llm.generate(prompts[:2], params[:2], use_tqdm=False)
    rates: dict[str, list[float]] = {b: [] for b in engines}
    tokens: dict[str, list] = {}
    for _ in range(repeats):
        for backend, llm in engines.items():
            start = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - start
            tokens[backend] = [o.outputs[0].token_ids for o in outs]
            rates[backend].append(sum(map(len, tokens[backend])) / elapsed)
    best = {b: max(r) for b, r in rates.items()}
    return {
        "num_requests": num_requests,
        "auto_tok_s": best["auto"],
        "torch_tok_s": best["torch"],
        "speedup": best["auto"] / best["torch"],
        "runs": rates,
        "same_tokens": tokens["auto"] == tokens["torch"],
    }


def run_gpu() -> dict | None:
    import torch

    if not torch.cuda.is_available():
        return None
    from tideflow.kernels.cuda.bench import decode_bandwidth

    return {"device": torch.cuda.get_device_name(), **decode_bandwidth()}


def format_table(result: dict) -> str:
    lines = [f"{'kernel':<48} {'kernel ms':>10} {'torch ms':>10} {'speedup':>8}"]
    lines += [f"{r['kernel']:<48} {r['kernel_ms']:>10.3f} {r['torch_ms']:>10.3f} {r['speedup']:>7.2f}x" for r in result["kernels"]]
    if e2e := result.get("e2e"):
        lines.append(
            f"engine, mixed trace x{e2e['num_requests']}: kernels {e2e['auto_tok_s']:.1f} tok/s, torch references "
            f"{e2e['torch_tok_s']:.1f} tok/s -> {e2e['speedup']:.2f}x (same tokens: {e2e['same_tokens']})"
        )
    if gpu := result.get("gpu"):
        lines.append(
            f"{gpu['device']}: decode attention {gpu['achieved_GBps']:.0f} GB/s of {gpu['copy_GBps']:.0f} GB/s copy "
            f"bandwidth = {gpu['ratio']:.0%}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tideflow bench kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="timed calls of each kernel and reference")
    p.add_argument("--only", default=None, help="run the cases whose name contains this")
    p.add_argument("--e2e", type=int, default=0, metavar="N", help="also run the engine on N mixed-trace requests")
    p.add_argument("--e2e-repeats", type=int, default=1)
    p.add_argument("--model", default=None, help="model of the --e2e run (default: the 24M benchmark model)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.e2e < 0:
        print("error: --repeats must be >= 1 and --e2e >= 0", flush=True)
        return 2
    result = {"kernels": run_kernels(args.repeats, args.only)}
    if args.e2e:
        result["e2e"] = run_e2e(args.e2e, args.e2e_repeats, args.model)
    result["gpu"] = run_gpu()
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
