"""Offline throughput: tideflow against Hugging Face on one seeded trace.

Every system runs the same `mixed` trace on the same weights, greedy, and generates exactly
each request's `max_tokens` (EOS ignored). The systems (`hf-static`, `hf-cb`, `tideflow`, and
the peer `vllm` = `vllm-default` + `vllm-2t` from `.venv-vllm`, `make bench-peers`) are in
`tideflow.bench.systems`.

Each system loads its model and warms up on two short requests before the timed run; one
system runs at a time. `--structured json` runs the tideflow engine alone on the trace with and
without a JSON-schema constraint, alternating, and times the grammar's compile, cold and cached
(`tideflow.bench.structured`). Then, at batch 32, the tideflow engine step is compared with the model
forward alone on the same batch (engine overhead = step - forward). Absolute numbers on a
shared machine are noisy: read the ratios (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tideflow.bench.contention import busy_core
from tideflow.bench.bench_model import BENCH_MODEL_NAME, bench_model, default_model_dir, model_info
from tideflow.bench.machine import cpu_busy_s, environment, other_cpu_frac, own_cpu_s
from tideflow.bench.peer_vllm import PeerEnvironmentError, resolve_env
from tideflow.bench.systems import (
    GROUPS, KV_CACHE_BYTES, MAX_BATCH_TOKENS, MAX_SEQS, PEERS, SYSTEMS, System, expand_systems,
)
from tideflow.bench.workloads import STRUCTURED_WORKLOADS, mixed_trace, trace_stats

DEFAULT_SYSTEMS = ("hf-static", "hf-cb", "tideflow")
DEFAULT_NUM_REQUESTS = 64  # a full 3-system run takes ~5 minutes on a 2-core CPU
OVERHEAD_BATCH, OVERHEAD_PROMPT_LEN, OVERHEAD_STEPS = 32, 128, 16


def _own_cpu_s(system: System) -> float:
    """CPU seconds of this process plus those of the system's subprocesses (a peer's)."""
    cpu_s = getattr(system, "cpu_s", None)
    return own_cpu_s() + (cpu_s() if cpu_s else 0.0)


def _time_system(name: str, model_dir: str, trace, *, dtype: str, batch_size: int, vocab_size: int,
                 vllm_env: str | None = None) -> dict:
    """Load, warm up, then time one system on the trace; returns its result record. The wall
    time is the system's own when it reports one (a peer times its `generate` in its process)."""
    start = time.perf_counter()
    system: System = SYSTEMS[name](model_dir, dtype, batch_size, vllm_env=vllm_env)
    load_s = time.perf_counter() - start  # a peer: its process start, imports, load and own warm-up
    try:
        system.generate(mixed_trace(2, 1, vocab_size=vocab_size, max_prompt=32, min_output=4, max_output=4))
        busy0, own0, start = cpu_busy_s(), _own_cpu_s(system), time.perf_counter()
        gen = system.generate(trace)
        outer = time.perf_counter() - start
        other = other_cpu_frac(busy0, own0, outer, _own_cpu_s(system))
    finally:
        system.close()
    wall = gen.wall_s if gen.wall_s is not None else outer
    for r, ids in zip(trace, gen.token_ids):
        if len(ids) != r.max_tokens:
            raise RuntimeError(f"{name}: a request asked for {r.max_tokens} tokens and got {len(ids)}")
    useful = sum(r.max_tokens for r in trace)
    prompt = sum(len(r.prompt_token_ids) for r in trace)
    return {
        "wall_s": wall,
        "load_s": load_s,  # from constructing the system until it is ready, before the warm-up here
        "output_tokens": useful,
        "generated_tokens": gen.generated_tokens,
        "output_tok_s": useful / wall,
        "total_tok_s": (prompt + useful) / wall,
        "requests_s": len(trace) / wall,
        # CPU used by other processes during the run (not the system's own subprocesses), as a
        # fraction of the machine (noise indicator)
        "other_cpu_frac": other,
        "token_ids": gen.token_ids,
    }


# -- engine overhead ------------------------------------------------------------------------------
def measure_overhead(
    model_dir: str, *, dtype: str = "float32", batch: int = OVERHEAD_BATCH, prompt_len: int = OVERHEAD_PROMPT_LEN,
    steps: int = OVERHEAD_STEPS, seed: int = 0,
) -> dict:
    """Time `steps` decode steps of the tideflow engine at `batch` running sequences against the
    model forward alone on the same batches. Steps alternate: one timed `engine.step()`, then
    one step run by hand with `runner.forward_only` timed on its scheduled batch, so both see
    the same batch shape and context lengths (within one token)."""
    import numpy as np

    from tideflow import LLM, SamplingParams
    from tideflow.runtime.engine.step_profile import profile_step

    llm = LLM(model_dir, dtype=dtype, kv_cache_memory_bytes=KV_CACHE_BYTES, max_num_seqs=max(MAX_SEQS, batch),
              max_num_batched_tokens=MAX_BATCH_TOKENS)
    engine = llm.engine
    rng = np.random.default_rng(seed)
    params = SamplingParams(temperature=0, max_tokens=2 * steps + 8, ignore_eos=True)
    seqs = []
    for i in range(batch):
        ids = rng.integers(5, engine.vocab_size, size=prompt_len).tolist()
        seqs += engine.add_request(f"overhead-{i}", ids, params).seqs
    while any(s.num_computed_tokens < len(s.token_ids) - 1 or s.num_output_tokens == 0 for s in seqs):
        engine.step()  # prefill (chunked under the budget) until every sequence decodes
    step_s, fwd_s, prep_s, sched_s, exec_s, upd_s = [], [], [], [], [], []
    busy0, own0, start = cpu_busy_s(), own_cpu_s(), time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        step_s.append(time.perf_counter() - t0)

        parts = profile_step(engine)
        if parts.num_seqs != batch or parts.num_tokens != batch:
            raise RuntimeError(f"overhead: expected {batch} decode rows, the scheduler gave {parts.num_seqs}")
        sched_s.append(parts.schedule_s)
        fwd_s.append(parts.forward_s)
        prep_s.append(parts.prepare_s)
        exec_s.append(parts.execute_s)
        upd_s.append(parts.update_s)
    for seq in seqs:
        if not seq.finished:
            engine.abort_request(seq.request_id)

    other = other_cpu_frac(busy0, own0, time.perf_counter() - start)
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    step, fwd = ms(step_s), ms(fwd_s)
    return {
        "batch": batch,
        "prompt_len": prompt_len,
        "steps": steps,
        "step_ms": step,  # medians
        "forward_ms": fwd,
        "overhead_ms": step - fwd,
        "overhead_pct": 100 * (step - fwd) / step,
        "step_ms_min": 1e3 * min(step_s),  # minima: the least disturbed steps on a shared machine
        "forward_ms_min": 1e3 * min(fwd_s),
        "other_cpu_frac": other,
        "parts_ms": {  # medians over the hand-run steps; forward includes input preparation
            "schedule": ms(sched_s),
            "prepare_inputs": ms(prep_s),
            "execute": ms(exec_s),
            "update": ms(upd_s),
        },
    }


# -- the benchmark --------------------------------------------------------------------------------
def _agreement(ref: list[list[int]], other: list[list[int]]) -> dict:
    """How far two systems' greedy outputs agree: identical requests, and where the others diverge."""
    diverged = {}
    for i, (a, b) in enumerate(zip(ref, other)):
        pos = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if pos is not None or len(a) != len(b):
            diverged[str(i)] = pos if pos is not None else min(len(a), len(b))
    return {
        "identical_requests": len(ref) - len(diverged),
        "requests": len(ref),
        "first_divergence": diverged,  # request index -> first differing output position
    }


def _run_rounds(result: dict, systems, trace, model_dir, tokens: dict, walls: dict, *, repeats: int, dtype: str,
                batch_size: int, vocab_size: int, vllm_env, log) -> None:
    """Run the systems `repeats` times, alternating; keep each one's fastest run in `result`."""
    for rep in range(repeats):
        for name in systems:
            log(f"running {name} on {len(trace)} requests" + (f" (round {rep + 1}/{repeats})" if repeats > 1 else ""))
            record = _time_system(name, model_dir, trace, dtype=dtype, batch_size=batch_size,
                                  vocab_size=vocab_size, vllm_env=vllm_env)
            tokens[name] = record.pop("token_ids")
            walls[name].append(record["wall_s"])
            best = result["systems"].get(name)
            if best is None or record["wall_s"] < best["wall_s"]:
                result["systems"][name] = record
            log(f"  {name}: {record['wall_s']:.1f} s, {record['output_tok_s']:.1f} output tok/s")


def run_offline(
    model_dir: str,
    *,
    num_requests: int,
    seed: int,
    systems: list[str],
    batch_size: int = 8,
    dtype: str = "float32",
    json_path: str | os.PathLike | None = None,
    min_prompt: int = 16,
    max_prompt: int = 1024,
    min_output: int = 8,
    max_output: int = 512,
    overhead_steps: int = OVERHEAD_STEPS,
    repeats: int = 1,
    return_tokens: bool = False,
    vllm_env: str | os.PathLike | None = None,
    contention: bool = False,
    log=None,
) -> dict:
    """Run `systems` on one `mixed` trace and return a JSON-able result (written to `json_path`
    when given). `overhead_steps` > 0 also measures engine overhead at batch 32 (needs
    "tideflow" in `systems`). `repeats` > 1 runs the systems that many times, alternating, and
    reports each one's fastest run (all wall times under `wall_s_runs`). `return_tokens` adds every system's generated ids under
    `debug.token_ids`. Group names expand (`vllm`: both vLLM configurations); the peers run
    from `vllm_env` (default `peer_vllm.default_env()`), checked before anything runs
    (PeerEnvironmentError when missing). Greedy-token agreement is reported against tideflow
    when it runs, else the first system. `contention`: every system loads and runs beside a
    process that keeps one core busy (`tideflow.bench.contention`). `log` receives progress
    lines (e.g. `print`)."""
    systems = expand_systems(list(systems))
    if any(name in PEERS for name in systems):
        vllm_env = str(resolve_env(vllm_env))
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    log = log or (lambda line: None)
    model_dir = str(model_dir)
    info = model_info(model_dir)
    trace = mixed_trace(
        num_requests, seed, vocab_size=info["vocab_size"], min_prompt=min_prompt, max_prompt=max_prompt,
        min_output=min_output, max_output=max_output,
    )
    result: dict[str, Any] = {
        "benchmark": "offline",
        "model": info,
        "dtype": dtype,
        "trace": {"workload": "mixed", "seed": seed, **trace_stats(trace)},
        "settings": {"repeats": repeats, "hf_static_batch_size": batch_size, "max_num_seqs": MAX_SEQS,
                     "max_batch_tokens": MAX_BATCH_TOKENS, "kv_cache_bytes": KV_CACHE_BYTES},
        "environment": environment(),
        "systems": {},
    }
    tokens, walls = {}, {name: [] for name in systems}
    with contextlib.ExitStack() as stack:
        if contention:
            result["settings"]["busy_core"] = stack.enter_context(busy_core()).core
        _run_rounds(result, systems, trace, model_dir, tokens, walls, repeats=repeats, dtype=dtype,
                    batch_size=batch_size, vocab_size=info["vocab_size"], vllm_env=vllm_env, log=log)
    if repeats > 1:
        for name in systems:
            result["systems"][name]["wall_s_runs"] = walls[name]
    if "tideflow" in result["systems"]:
        ours = result["systems"]["tideflow"]["output_tok_s"]
        result["ratios"] = {
            f"tideflow/{name}": ours / rec["output_tok_s"] for name, rec in result["systems"].items() if name != "tideflow"
        }
    reference = "tideflow" if "tideflow" in systems else systems[0]
    result["agreement_reference"] = reference
    result["agreement"] = {  # greedy ids against the reference's (float32 may flip near-ties late)
        name: _agreement(tokens[reference], tokens[name]) for name in systems if name != reference
    }
    if overhead_steps > 0 and "tideflow" in systems:
        log(f"measuring engine overhead at batch {OVERHEAD_BATCH} ...")
        result["overhead"] = measure_overhead(model_dir, dtype=dtype, steps=overhead_steps, seed=seed)
    result["environment"]["load_avg_1m_end"] = os.getloadavg()[0]
    if return_tokens:
        result["debug"] = {"token_ids": tokens}
    if json_path is not None:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def format_table(result: dict) -> str:
    """The result as an aligned plain-text table."""
    t, m = result["trace"], result["model"]
    lines = [
        f"model: {m['model_type']} {m['params'] / 1e6:.1f}M params, {result['dtype']}; "
        f"trace: mixed seed={t['seed']}, {t['num_requests']} requests, "
        f"{t['prompt_tokens']} prompt + {t['output_tokens']} output tokens "
        f"(prompt mean {t['prompt_len_mean']:.0f} / median {t['prompt_len_median']:.0f}, "
        f"output mean {t['output_len_mean']:.0f} / median {t['output_len_median']:.0f})",
        "",
    ]
    ratios = result.get("ratios", {})
    header = ("system", "wall s", "output tok/s", "total tok/s", "req/s", "generated", "tideflow x", "others' CPU")
    rows = [header]
    for name, r in result["systems"].items():
        ratio = ratios.get(f"tideflow/{name}")
        rows.append((
            name, f"{r['wall_s']:.2f}", f"{r['output_tok_s']:.1f}", f"{r['total_tok_s']:.1f}",
            f"{r['requests_s']:.2f}", str(r["generated_tokens"]), "-" if ratio is None else f"{ratio:.2f}",
            "?" if r.get("other_cpu_frac") is None else f"{100 * r['other_cpu_frac']:.0f}%",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("(output tok/s counts each request's own max_tokens; 'generated' includes hf-static's padding waste;")
    lines.append(" others' CPU: share of the machine used by other processes while the system ran; above a few %")
    lines.append(" the timings are disturbed)")
    reference = result.get("agreement_reference") or next(iter(result["systems"]), None)
    for name, a in result.get("agreement", {}).items():
        where = ", ".join(f"#{r}@{pos}" for r, pos in list(a["first_divergence"].items())[:6])
        share = 100 * a["identical_requests"] / a["requests"] if a["requests"] else 100.0
        lines.append(f"greedy tokens, {name} vs {reference}: {a['identical_requests']}/{a['requests']} requests "
                     f"identical ({share:.0f}%)" + (f" (request#@first differing position: {where})" if where else ""))
    loads = ", ".join(f"{name} {r['load_s']:.1f} s" for name, r in result["systems"].items() if r.get("load_s"))
    if loads:
        lines.append(f"load times (not in wall s): {loads}")
    o = result.get("overhead")
    if o:
        p = o["parts_ms"]
        lines += [
            "",
            f"engine overhead, batch {o['batch']} in decode (prompts of {o['prompt_len']}), median of {o['steps']} steps:",
            f"  step {o['step_ms']:.2f} ms, forward {o['forward_ms']:.2f} ms, "
            f"overhead {o['overhead_ms']:.2f} ms ({o['overhead_pct']:.1f}%)",
            f"  minima: step {o['step_ms_min']:.2f} ms, forward {o['forward_ms_min']:.2f} ms; "
            f"others' CPU {'?' if o['other_cpu_frac'] is None else format(o['other_cpu_frac'], '.0%')}",
            f"  parts: schedule {p['schedule']:.2f} ms, prepare inputs {p['prepare_inputs']:.2f} ms, "
            f"execute {p['execute']:.2f} ms, update {p['update']:.2f} ms",
        ]
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The options of `tideflow bench offline`, added to `parser` (a new one when None)."""
    p = parser or argparse.ArgumentParser(prog="tideflow bench offline", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help=f"model directory (default: the {BENCH_MODEL_NAME} bench model, "
                   "written on first use under the temp directory)")
    p.add_argument("--num-requests", type=int, default=DEFAULT_NUM_REQUESTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma-separated, from {sorted(SYSTEMS)}; `vllm` means {' and '.join(GROUPS['vllm'])} "
                        "(vLLM's default CPU configuration and both cores; needs `make bench-peers`)")
    p.add_argument("--vllm-env", default=None, metavar="PATH",
                   help="the vLLM peer's virtual environment (default: $TIDEFLOW_VLLM_ENV, else <repo>/.venv-vllm)")
    p.add_argument("--batch-size", type=int, default=8, help="hf-static batch size")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--min-prompt", type=int, default=16)
    p.add_argument("--max-prompt", type=int, default=1024)
    p.add_argument("--min-output", type=int, default=8)
    p.add_argument("--max-output", type=int, default=512)
    p.add_argument("--overhead-steps", type=int, default=OVERHEAD_STEPS,
                   help="decode steps timed for the batch-32 overhead measurement (0: skip)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the systems this many times, alternating, and keep each one's fastest run")
    p.add_argument("--contention", action="store_true",
                   help="run every system beside a process that keeps one core busy (a shared machine)")
    p.add_argument("--structured", default=None, choices=sorted(STRUCTURED_WORKLOADS),
                   help="time the tideflow engine with and without this output constraint (alternating, "
                        "--repeats rounds) and the grammar's compile; --systems is ignored")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.structured is not None:
        return _main_structured(args)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    try:
        systems = expand_systems(systems)
        if any(name in PEERS for name in systems):
            resolve_env(args.vllm_env)  # before the bench model is written or anything runs
    except (ValueError, PeerEnvironmentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model_dir = args.model or str(bench_model(default_model_dir()))
    result = run_offline(
        model_dir, num_requests=args.num_requests, seed=args.seed, systems=systems, batch_size=args.batch_size,
        dtype=args.dtype, json_path=args.json, min_prompt=args.min_prompt, max_prompt=args.max_prompt,
        min_output=args.min_output, max_output=args.max_output, overhead_steps=args.overhead_steps,
        repeats=args.repeats, vllm_env=args.vllm_env, contention=args.contention,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(format_table(result))
    return 0


def _main_structured(args) -> int:
    from tideflow.bench.structured import format_table as structured_table, run_structured

    if args.repeats < 1:
        print(f"error: --repeats must be positive, got {args.repeats}", file=sys.stderr)
        return 2
    model_dir = args.model or str(bench_model(default_model_dir()))
    result = run_structured(
        model_dir, kind=args.structured, num_requests=args.num_requests, seed=args.seed, dtype=args.dtype,
        repeats=args.repeats, min_prompt=args.min_prompt, max_prompt=args.max_prompt, min_output=args.min_output,
        max_output=args.max_output, log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json is not None:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(structured_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
