"""Online serving benchmark: stream a seeded trace into a running OpenAI-compatible server at a
given request rate and report TTFT, TPOT, ITL, E2EL, throughput and goodput.

Metrics are those of `vllm bench serve` (docs/benchmarks.md, "Serving metrics"), so a tideflow
server and a vLLM server can be measured the same way. Prompts come from `workloads`
(`mixed` or `shared-prefix`), sent as token ids to /v1/completions (exact prompt lengths) or
as their decoded text to /v1/chat/completions; every request generates exactly its trace's
output length (`ignore_eos`). One short test request checks the server before the timed run.
`--sweep` repeats the run per rate (same trace and seed) and plots the result;
`--compare-inprocess MODEL_DIR` also runs the same requests through the in-process engine
and reports what serving adds per token (HTTP ITL minus the engine's decode step);
`--compare-vllm` first runs the same requests and arrivals against a `vllm serve` it starts
from the peer environment (`make bench-peers`), stops it, then measures the server at --url,
and reports the two side by side with ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tideflow.bench.serve_client import Target, arrival_offsets, fetch_model_card, normalize_base_url, run_requests
from tideflow.bench.serve_metrics import compute_metrics, latencies, parse_goodput
from tideflow.bench.serve_record import RequestRecord
from tideflow.bench.serve_report import format_run, format_sweep, plot_sweep
from tideflow.bench.workloads import TraceRequest, mixed_trace, shared_prefix_trace, trace_stats

if TYPE_CHECKING:
    from tideflow.bench.serve_inprocess import InprocessEngine

WORKLOADS = {"mixed": mixed_trace, "shared-prefix": shared_prefix_trace}
DEFAULT_PLOT = "serve_sweep.png"


# -- the trace ------------------------------------------------------------------------------------
def build_trace(args: argparse.Namespace, vocab_size: int) -> list[TraceRequest]:
    """The seeded trace; length flags left unset keep the workload's defaults. For
    shared-prefix the prompt lengths are those of the suffix after the shared prefix."""
    prompt_names = ("min_prompt", "max_prompt") if args.workload == "mixed" else ("min_suffix", "max_suffix")
    given = {
        prompt_names[0]: args.min_prompt, prompt_names[1]: args.max_prompt,
        "min_output": args.min_output, "max_output": args.max_output,
    }
    if args.workload == "shared-prefix":
        given["prefix_len"] = args.prefix_len
    overrides = {k: v for k, v in given.items() if v is not None}
    return WORKLOADS[args.workload](args.num_prompts, args.seed, vocab_size=vocab_size, **overrides)


def check_fits(trace: list[TraceRequest], max_model_len: int | None) -> None:
    """Fail before sending anything when a request cannot fit the server's context."""
    if max_model_len is None:
        return
    longest = max((len(r.prompt_token_ids) + r.max_tokens for r in trace), default=0)
    if longest > max_model_len:
        raise ValueError(f"a request needs {longest} tokens of context but the server's max_model_len is "
                         f"{max_model_len}: lower --max-prompt / --max-output (or --prefix-len)")


# -- runs -----------------------------------------------------------------------------------------
def _request_rows(records: list[RequestRecord]) -> list[dict]:
    """Per-request detail for the JSON, in trace order."""
    rows = []
    for r in records:
        row = {"prompt_len": r.prompt_len, "max_tokens": r.max_tokens, "output_tokens": r.output_tokens,
               "error": r.error}
        if r.ok:
            lat = latencies(r)
            row.update(ttft_ms=1e3 * lat.ttft, e2el_ms=1e3 * lat.e2el,
                       tpot_ms=None if lat.tpot is None else 1e3 * lat.tpot, itl_ms=[1e3 * g for g in lat.itl])
        rows.append(row)
    return rows


def run_once(args: argparse.Namespace, target: Target, trace: list[TraceRequest], prompts: list, rate: float,
             slos_ms: dict[str, float], inprocess: InprocessEngine | None = None) -> dict:
    """One timed run at `rate`: its settings, metrics, per-request detail and, with an
    in-process engine, the comparison with it."""
    offsets = arrival_offsets(len(trace), rate, args.burstiness, args.seed)
    records, duration = run_requests(
        target, prompts, [r.max_tokens for r in trace], [len(r.prompt_token_ids) for r in trace], offsets,
        max_concurrency=args.max_concurrency, timeout_s=args.timeout,
    )
    run = {"endpoint": args.endpoint, "request_rate": rate if math.isfinite(rate) else "inf", "burstiness": args.burstiness,
           "max_concurrency": args.max_concurrency, "slos_ms": slos_ms,
           "requested_output_tokens": sum(r.max_tokens for r in trace),
           **compute_metrics(records, duration, slos_ms)}
    if inprocess is not None:
        from tideflow.bench.serve_inprocess import compare

        run["inprocess"] = compare(inprocess.run(trace, offsets, args.max_concurrency), run)
    run["requests"] = _request_rows(records)
    return run


def _test_request(target: Target, trace: list[TraceRequest], prompts: list, timeout_s: float) -> None:
    """A short request before the timed runs: a server that rejects the benchmark's requests
    fails here, with its message, instead of as N identical failures."""
    (record,), _ = run_requests(target, prompts[:1], [min(4, trace[0].max_tokens)],
                                [len(trace[0].prompt_token_ids)], arrival_offsets(1, math.inf), timeout_s=timeout_s)
    if not record.ok:
        raise RuntimeError(f"the test request to {target.url} failed: {record.error}")


def _prompts(kind: str, trace: list[TraceRequest], tokenizer) -> list:
    """Token ids for completions; for chat, their text (the server re-encodes it under its
    chat template, so prompt lengths come from the server's usage counts)."""
    if kind == "completions":
        return [r.prompt_token_ids for r in trace]
    return [tokenizer.decode(r.prompt_token_ids) for r in trace]


# -- the command ----------------------------------------------------------------------------------
def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive (or inf), got {text!r}")
    return value


def _rates(text: str) -> list[float]:
    try:
        return [_positive_float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive rates such as 1,4,inf, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tideflow bench serve", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")
    p.add_argument("--model", default=None, help="served model name (default: the server's first model)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory, for the vocabulary and chat prompts "
                   "(default: the model directory the server reports, when it exists here)")
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="mixed")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="fixes the trace and the arrival times")
    p.add_argument("--min-prompt", type=int, default=None, help="prompt length range (shared-prefix: of the suffix)")
    p.add_argument("--max-prompt", type=int, default=None)
    p.add_argument("--min-output", type=int, default=None, help="output length range (exact: EOS is ignored)")
    p.add_argument("--max-output", type=int, default=None)
    p.add_argument("--prefix-len", type=int, default=None, help="shared-prefix: the shared prefix's length")
    p.add_argument("--rate", type=_positive_float, default=math.inf, help="requests per second (default: inf, all at once)")
    p.add_argument("--burstiness", type=_positive_float, default=1.0,
                   help="gamma shape of the inter-arrival times: 1 is Poisson, < 1 burstier, > 1 more even")
    p.add_argument("--max-concurrency", type=int, default=None, help="at most this many requests in flight")
    p.add_argument("--goodput", nargs="+", default=[], metavar="NAME:MS",
                   help="SLOs for goodput, e.g. ttft:500 tpot:50 e2el:5000 (milliseconds)")
    p.add_argument("--sweep", type=_rates, default=None, metavar="R1,R2,...",
                   help="run each rate in turn (instead of --rate), print a summary and plot it")
    p.add_argument("--plot", default=None, metavar="PATH.png", help=f"the sweep's plot (default: {DEFAULT_PLOT})")
    p.add_argument("--compare-inprocess", default=None, metavar="MODEL_DIR",
                   help="also run the same requests (same arrivals) through the in-process engine on this model "
                        "and report ITL over HTTP minus its mean decode step time")
    p.add_argument("--inprocess-dtype", default="auto", help="dtype of the in-process engine: match the server's")
    p.add_argument("--compare-vllm", nargs="?", const="", default=None, metavar="MODEL_DIR",
                   help="first run the same requests against `vllm serve MODEL_DIR` (default: the tokenizer "
                        "directory, i.e. the server's model directory) started and stopped here, then compare")
    p.add_argument("--vllm-config", choices=["default", "2t"], default="default",
                   help="vLLM's CPU threads: its default (one core reserved for its front end) or both cores")
    p.add_argument("--vllm-dtype", default="float32", choices=["float32", "bfloat16"], help="vllm serve --dtype")
    p.add_argument("--vllm-env", default=None, metavar="PATH",
                   help="the vLLM peer's virtual environment (default: $TIDEFLOW_VLLM_ENV, else <repo>/.venv-vllm)")
    p.add_argument("--timeout", type=_positive_float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the settings, metrics and per-request detail")
    return p


def _checked_args(p: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, float]]:
    args = p.parse_args(argv)
    if args.num_prompts < 1:
        p.error(f"--num-prompts must be positive, got {args.num_prompts}")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        p.error(f"--max-concurrency must be positive, got {args.max_concurrency}")
    if args.plot and not args.sweep:
        p.error("--plot needs --sweep")
    try:
        slos = parse_goodput(args.goodput)
    except ValueError as exc:
        p.error(str(exc))
    return args, slos


def _load_tokenizer(args: argparse.Namespace, card: dict):
    from tideflow.models import load_tokenizer

    return load_tokenizer(_model_source(args, card))


def _model_source(args: argparse.Namespace, card: dict) -> str:
    source = args.tokenizer or card.get("root")
    if not source or not Path(source).exists():
        raise ValueError(f"no tokenizer: the server's model directory {source!r} is not on this machine; pass --tokenizer")
    return source


def _vllm_runs(args: argparse.Namespace, card: dict, trace: list[TraceRequest], prompts: list,
               slos: dict[str, float]) -> dict:
    """Start `vllm serve`, run every rate against it with the same client, stop it."""
    from tideflow.bench.serve_vllm import VllmServer

    model_dir = args.compare_vllm or _model_source(args, card)
    print(f"starting vllm serve {model_dir} ({args.vllm_config} config) ...", file=sys.stderr, flush=True)
    with VllmServer(model_dir, card["id"], dtype=args.vllm_dtype, config=args.vllm_config,
                    env_path=args.vllm_env) as server:
        print(f"vllm serve healthy after {server.startup_s:.1f} s (log: {server.log_path})", file=sys.stderr, flush=True)
        vcard = fetch_model_card(server.base_url, card["id"], timeout_s=30.0)
        check_fits(trace, vcard.get("max_model_len"))
        target = Target(server.base_url, args.endpoint, vcard["id"])
        _test_request(target, trace, prompts, args.timeout)
        runs = []
        for rate in args.sweep or [args.rate]:
            runs.append(run_once(args, target, trace, prompts, rate, slos))
            print("vLLM:\n" + format_run(runs[-1]), flush=True)
    return {"model_dir": str(model_dir), "config": args.vllm_config, "dtype": args.vllm_dtype,
            "startup_s": server.startup_s, "log": str(server.log_path), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args, slos = _checked_args(p, argv)
    if args.compare_vllm is not None:
        from tideflow.bench.peer_vllm import PeerEnvironmentError, resolve_env

        try:
            resolve_env(args.vllm_env)  # before anything is sent: the server's run would be wasted
        except PeerEnvironmentError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    base = normalize_base_url(args.url)
    try:
        card = fetch_model_card(base, args.model, timeout_s=min(args.timeout, 30.0))
        tokenizer = _load_tokenizer(args, card)
        trace = build_trace(args, vocab_size=len(tokenizer))
        check_fits(trace, card.get("max_model_len"))
        target = Target(base, args.endpoint, card["id"])
        prompts = _prompts(args.endpoint, trace, tokenizer)
        _test_request(target, trace, prompts, args.timeout)
    except (OSError, ValueError, RuntimeError) as exc:  # unreachable server, bad lengths, rejected request
        print(f"error: {exc}", file=sys.stderr)
        return 1
    vllm = None
    if args.compare_vllm is not None:
        try:
            vllm = _vllm_runs(args, card, trace, prompts, slos)
        except (OSError, ValueError, RuntimeError) as exc:  # vllm serve died, timed out or rejected the requests
            print(f"error: vLLM: {exc}", file=sys.stderr)
            return 1
    inprocess = None
    if args.compare_inprocess:
        from tideflow.bench.serve_inprocess import InprocessEngine

        inprocess = InprocessEngine(args.compare_inprocess, args.inprocess_dtype)
    runs = []
    for rate in args.sweep or [args.rate]:
        runs.append(run_once(args, target, trace, prompts, rate, slos, inprocess))
        print(("tideflow:\n" if vllm is not None else "") + format_run(runs[-1]), flush=True)
    result = {"benchmark": "serve", "url": base, "model": card["id"], "workload": args.workload, "seed": args.seed,
              "trace": trace_stats(trace), "runs": runs}
    if vllm is not None:
        from tideflow.bench.serve_vllm import compare, format_comparison

        result["vllm"] = vllm
        result["comparison"] = [compare(ours, theirs) for ours, theirs in zip(runs, vllm["runs"])]
        for comparison in result["comparison"]:
            print(format_comparison(comparison, args.vllm_config), flush=True)
    if args.sweep:
        print(format_sweep(runs))
        plot = plot_sweep(runs, args.plot or DEFAULT_PLOT)
        result["plot"] = str(plot)
        print(f"plot: {plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
