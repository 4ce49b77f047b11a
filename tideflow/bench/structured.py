"""Structured outputs, offline: the tideflow engine on one `mixed` trace with and without a
JSON-schema constraint, alternating in one process on one loaded engine, plus the grammar's
compile time (cold, and served from the engine's cache).

Both runs are greedy with EOS ignored, like `tideflow bench offline`. A constrained request
may still end before its max_tokens when its grammar completes, so throughput counts the
tokens each run actually generated; `full` says how many requests ran to their max_tokens.
The bitmask of the next step is computed on a background thread while the forward runs, so
the constrained run's cost is mostly what the mask computation takes beyond the forward.
"""

from __future__ import annotations

import statistics
import time

from tideflow.bench.machine import cpu_busy_s, environment, other_cpu_frac, own_cpu_s
from tideflow.bench.systems import KV_CACHE_BYTES, MAX_BATCH_TOKENS, MAX_SEQS
from tideflow.bench.workloads import STRUCTURED_WORKLOADS, TraceRequest, mixed_trace, trace_stats

COMPILE_REPEATS = 20  # cached look-ups timed (their median is reported)


def compile_times(tokenizer, constraint: dict, eos_token_ids) -> dict:
    """Seconds to get a matcher for `constraint` from a fresh engine-side grammar cache: the
    tokenizer's conversion for llguidance (once per engine), the first (cold) compile, and the
    median of later cached ones."""
    from llguidance.hf import from_tokenizer

    from tideflow.runtime.engine.structured.grammar_cache import GrammarCache
    from tideflow.sampling_params import StructuredOutputsParams

    spec = StructuredOutputsParams(**constraint)
    start = time.perf_counter()
    cache = GrammarCache(from_tokenizer(tokenizer, eos_token=list(eos_token_ids)))
    tokenizer_s = time.perf_counter() - start
    start = time.perf_counter()
    cache.matcher(spec)
    cold_s = time.perf_counter() - start
    cached = []
    for _ in range(COMPILE_REPEATS):
        start = time.perf_counter()
        cache.matcher(spec)
        cached.append(time.perf_counter() - start)
    return {"tokenizer_s": tokenizer_s, "cold_ms": 1e3 * cold_s, "cached_ms": 1e3 * statistics.median(cached),
            "cache_misses": cache.misses, "cache_hits": cache.hits}


def _run(llm, trace: list[TraceRequest], constraint: dict | None) -> dict:
    from tideflow import SamplingParams

    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in trace]
    params = [SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True, structured_outputs=constraint)
              for r in trace]
    busy0, own0, start = cpu_busy_s(), own_cpu_s(), time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    tokens = [len(o.outputs[0].token_ids) for o in outputs]
    return {
        "wall_s": wall,
        "generated_tokens": sum(tokens),
        "output_tok_s": sum(tokens) / wall,
        "full": sum(n == r.max_tokens for n, r in zip(tokens, trace)),  # requests that ran to max_tokens
        "other_cpu_frac": other_cpu_frac(busy0, own0, wall),
        "texts": [o.outputs[0].text for o in outputs],
    }


def run_structured(model_dir: str, *, kind: str, num_requests: int, seed: int, dtype: str = "float32",
                   repeats: int = 2, min_prompt: int = 16, max_prompt: int = 1024, min_output: int = 8,
                   max_output: int = 512, log=None) -> dict:
    """Time the trace unconstrained and under `STRUCTURED_WORKLOADS[kind]`, alternating
    `repeats` times on one engine (each keeps its fastest run); check that every constrained
    output that completed validates. Returns a JSON-able result."""
    from tideflow import LLM
    from tideflow.bench.bench_model import model_info

    if kind not in STRUCTURED_WORKLOADS:
        raise ValueError(f"structured: one of {sorted(STRUCTURED_WORKLOADS)}, got {kind!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    log = log or (lambda line: None)
    constraint = STRUCTURED_WORKLOADS[kind]
    info = model_info(model_dir)
    trace = mixed_trace(num_requests, seed, vocab_size=info["vocab_size"], min_prompt=min_prompt,
                        max_prompt=max_prompt, min_output=min_output, max_output=max_output)
    llm = LLM(model_dir, dtype=dtype, kv_cache_memory_bytes=KV_CACHE_BYTES, max_num_seqs=MAX_SEQS,
              max_num_batched_tokens=MAX_BATCH_TOKENS)
    log("grammar compile times ...")
    compiled = compile_times(llm.get_tokenizer(), constraint, llm.engine.eos_token_ids)
    warm = mixed_trace(2, 1, vocab_size=info["vocab_size"], max_prompt=32, min_output=4, max_output=4)
    _run(llm, warm, None)
    _run(llm, warm, constraint)  # the engine's own compile of this grammar happens here, not in the timed runs
    best: dict[str, dict] = {}
    walls: dict[str, list[float]] = {"unconstrained": [], "constrained": []}
    for rep in range(repeats):
        for name, c in (("unconstrained", None), ("constrained", constraint)):
            log(f"running {name} on {len(trace)} requests (round {rep + 1}/{repeats})")
            record = _run(llm, trace, c)
            walls[name].append(record["wall_s"])
            if name not in best or record["output_tok_s"] > best[name]["output_tok_s"]:
                best[name] = record
            log(f"  {name}: {record['wall_s']:.1f} s, {record['output_tok_s']:.1f} output tok/s")
    texts = best["constrained"].pop("texts")
    best["unconstrained"].pop("texts")
    complete = [t for t in texts if _complete(t)]
    for name in best:
        best[name]["wall_s_runs"] = walls[name]
    return {
        "benchmark": "offline-structured",
        "model": info,
        "dtype": dtype,
        "trace": {"workload": "mixed", "seed": seed, **trace_stats(trace)},
        "structured": {"kind": kind, "constraint": constraint, "repeats": repeats,
                       "complete_outputs_valid": all(_valid(t, constraint) for t in complete),
                       "complete_outputs": len(complete)},
        "runs": best,
        "ratio": best["constrained"]["output_tok_s"] / best["unconstrained"]["output_tok_s"],
        "compile": compiled,
        "environment": environment(),
    }


def _complete(text: str) -> bool:
    import json

    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _valid(text: str, constraint: dict) -> bool:
    """A complete output against its schema (jsonschema when installed, else it parses)."""
    import json

    try:
        import jsonschema
    except ImportError:
        return True
    try:
        jsonschema.validate(json.loads(text), constraint["json"])
    except jsonschema.ValidationError:
        return False
    return True


def format_table(result: dict) -> str:
    t, m, c = result["trace"], result["model"], result["compile"]
    lines = [
        f"model: {m['model_type']} {m['params'] / 1e6:.1f}M params, {result['dtype']}; trace: mixed seed={t['seed']}, "
        f"{t['num_requests']} requests, {t['prompt_tokens']} prompt tokens, up to {t['output_tokens']} output tokens; "
        f"constraint: {result['structured']['kind']} schema, greedy, EOS ignored; fastest of "
        f"{result['structured']['repeats']} alternating runs",
        "",
        f"{'run':<14} {'wall s':>8} {'generated':>10} {'tok/s':>8} {'full':>6} {'others CPU':>11}",
    ]
    for name, r in result["runs"].items():
        other = "?" if r["other_cpu_frac"] is None else f"{100 * r['other_cpu_frac']:.0f}%"
        lines.append(f"{name:<14} {r['wall_s']:>8.2f} {r['generated_tokens']:>10} {r['output_tok_s']:>8.1f} "
                     f"{r['full']:>6} {other:>11}")
    s = result["structured"]
    lines += [
        f"constrained / unconstrained throughput: {result['ratio']:.2f} (target >= 0.90)",
        f"complete constrained outputs: {s['complete_outputs']}, all valid: {s['complete_outputs_valid']}",
        f"grammar compile: tokenizer conversion {c['tokenizer_s'] * 1e3:.1f} ms (once per engine), "
        f"cold {c['cold_ms']:.2f} ms, cached {c['cached_ms'] * 1e3:.1f} us",
    ]
    return "\n".join(lines)
