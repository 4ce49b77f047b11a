"""`tideflow demo | serve | batch | bench | graph | replay`: the command-line entry points (more subcommands join as they land)."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from tideflow.serve.demo import run_demo

    run_demo(model=args.model, num_requests=args.num_requests, max_tokens=args.max_tokens, port=args.port,
             verbose=args.verbose)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from tideflow.engine_args import engine_options
    from tideflow.serve.launcher import serve_forever

    config = {
        "model": args.model,
        "graph": args.graph,
        "served_model_name": args.served_model_name,
        "num_replicas": args.replicas,
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
        "health_check_period_s": args.health_check_period_s,
        "tool_call_parser": args.tool_call_parser,
        "migration_limit": args.migration_limit,
        "api_keys": tuple(args.api_key or ()),
        "api_key_file": args.api_key_file,
        "rate_limits": _given({"requests_per_minute": args.rate_limit_rpm, "tokens_per_minute": args.rate_limit_tpm,
                               "concurrent_requests": args.rate_limit_concurrency}),
        "breaker": _given({"ttft_s": args.breaker_ttft_s, "error_rate": args.breaker_error_rate,
                           "window_s": args.breaker_window_s, "min_requests": args.breaker_min_requests,
                           "open_s": args.breaker_open_s}),
        "engine_options": engine_options(args),
    }
    try:
        return serve_forever(config, host=args.host, port=args.port, address=args.address)
    except ValueError as exc:  # bad arguments, found before anything starts
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _given(values: dict) -> dict:
    """The flags that were given (the rest keep their config defaults)."""
    return {k: v for k, v in values.items() if v is not None}


# what `tideflow batch` samples with where neither its flags nor the model's generation config
# say: greedy, so that reruns give the same text
BATCH_SAMPLING = {"max_tokens": 256, "temperature": 0.0, "top_p": 1.0}


def _json_arg(flag: str, text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"{flag}: not JSON: {text[:60]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag}: expected a JSON object, got {text[:60]!r}")
    return value


def _batch(args: argparse.Namespace) -> int:
    from tideflow import SamplingParams
    from tideflow.batch import run_job
    from tideflow.batch.run import default_sampling_params
    from tideflow.engine_args import engine_options
    try:
        try:
            concurrency = tuple(int(c) for c in args.concurrency.split(","))
        except ValueError:
            raise ValueError(f"--concurrency: expected N or MIN,MAX, got {args.concurrency!r}") from None
        # a flag left out takes the model's generation-config default, else BATCH_SAMPLING's (as
        # a request that leaves a field unset does on the server)
        given = {k: getattr(args, k) for k in BATCH_SAMPLING if getattr(args, k) is not None}
        base = SamplingParams(**BATCH_SAMPLING, seed=args.seed)
        params = default_sampling_params(args.model, engine_options(args, seed=False), base).replace(**given)
        if args.structured_outputs is not None:
            params = params.replace(structured_outputs=_json_arg("--structured-outputs", args.structured_outputs))
        if args.address is not None:
            import ray

            ray.init(address=args.address, log_to_driver=False)
        summary = run_job(
            args.input, args.output, args.model, prompt_column=args.prompt_column, messages_column=args.messages_column,
            id_column=args.id_column, sampling_params=params, max_tokens_column=args.max_tokens_column,
            structured_outputs_column=args.structured_outputs_column,
            concurrency=concurrency[0] if len(concurrency) == 1 else concurrency, batch_size=args.batch_size,
            batches_per_actor=args.batches_per_actor, engine_options=engine_options(args, seed=False), num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
        )
    except ValueError as exc:  # bad arguments or input, found before generation starts
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


def _bench(args: argparse.Namespace) -> int:
    benches = {"offline": "tideflow.bench.offline", "graph": "tideflow.bench.graph", "serve": "tideflow.bench.serve",
               "kernels": "tideflow.bench.kernels", "batch": "tideflow.bench.batch", "recovery": "tideflow.bench.recovery",
               "gpu-check": "tideflow.bench.gpu_check"}
    if not args.rest or args.rest[0] not in benches:
        print(f"usage: tideflow bench {{{','.join(benches)}}} [options]  (--help after the name for its options)", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(benches[args.rest[0]]).main(args.rest[1:])


def _graph(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tideflow.graphs import Graph

    try:
        cluster = None if args.cluster is None else json.loads(args.cluster)
        compiled = Graph.from_yaml(Path(args.file)).compile(cluster)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print:
        print(compiled.describe())
    else:
        print(f"graph {compiled.name!r} is valid: {len(compiled.stages)} stage(s), {len(compiled.edges)} edge(s)")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from tideflow.replay import graph_from_arg, replay
    from tideflow.runtime.recovery.request_log import read_log

    try:
        meta, records = read_log(args.log_dir)
        graph = graph_from_arg(args.graph, args.model or meta.get("model"), args.dtype)
        if args.ray:
            handle = graph.deploy(recovery=False)
            try:
                diffs = replay(records, handle.generate)
            finally:
                handle.shutdown()
        else:
            compiled = graph.compile()
            diffs = replay(records, lambda prompts, params: _run_inprocess(compiled, prompts, params))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"replayed {len(records)} request(s) against graph {graph.name!r}: {len(diffs)} differ")
    for d in diffs:
        if d.replayed is None:
            print(f"  {d.request_id}: failed: {d.error}")
        else:
            first = next((i for i, (a, b) in enumerate(zip(d.recorded[0], d.replayed[0])) if a != b), None)
            print(f"  {d.request_id}: recorded {len(d.recorded[0])} tokens, replayed {len(d.replayed[0])}; first difference at {first}")
    return 1 if diffs else 0


def _run_inprocess(compiled, prompts, params):
    from tideflow.runtime.dataflow.inprocess import run_graph

    return run_graph(compiled, prompts, params)


def build_parser() -> argparse.ArgumentParser:
    from tideflow.batch.run import DEFAULT_BATCHES_PER_ACTOR
    from tideflow.engine_args import add_engine_args
    from tideflow.serve.tool_parsers import TOOL_PARSERS

    parser = argparse.ArgumentParser(prog="tideflow", description="Serve and batch-run LLMs on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="serve the default model (SmolLM2-135M-Instruct) and stream chat answers through the openai client"
    )
    demo.add_argument("--model", default=None,
                      help="model directory or .gguf file (default: SmolLM2-135M-Instruct, else the embedded code model)")
    demo.add_argument("--num-requests", "--num-prompts", dest="num_requests", type=int, default=3,
                      help="questions to ask before the multi-turn conversation (completion prompts for a model "
                           "without a chat template)")
    demo.add_argument("--port", type=int, default=0, help="HTTP port (default: any free port)")
    demo.add_argument("--max-tokens", type=int, default=64, help="at most this many tokens per answer")
    demo.add_argument("--verbose", action="store_true", help="show Ray's, Serve's and tideflow's INFO logs")
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API with Ray Serve")
    serve.add_argument("--model", default=None, help="model directory or .gguf file "
                       "(default: SmolLM2-135M-Instruct when installed, else the embedded code model)")
    serve.add_argument("--graph", default="colocated", help="a built-in graph (colocated | disaggregated | multimodal | moe) or a graph YAML file")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free port)")
    serve.add_argument("--replicas", type=int, default=1, help="Serve replicas, each with its own graph")
    serve.add_argument("--address", default=None, help="join this Ray cluster (default: start a local Ray instance)")
    serve.add_argument("--served-model-name", default=None, help="the model name clients send (default: its directory's)")
    serve.add_argument("--max-ongoing-requests", type=int, default=64, help="per replica: requests in the graph")
    serve.add_argument("--max-queued-requests", type=int, default=64, help="per replica: requests waiting; then 429")
    serve.add_argument("--migration-limit", type=int, default=None, metavar="N",
                       help="how often one request may move to a live replica when the engine or decode replica "
                            "holding it dies (2+ replicas; past it the request fails; 0: off; default: 3)")
    serve.add_argument("--health-check-period-s", type=float, default=10.0,
                       help="seconds between Serve's health checks; 3 failed ones (a dead stage) replace the replica")
    serve.add_argument("--tool-call-parser", default=None, choices=sorted(TOOL_PARSERS),
                       help='how tool_choice "auto" finds tool calls in a reply (without one, "auto" is refused)')
    keys = serve.add_argument_group("API keys and limits (per Serve replica)")
    keys.add_argument("--api-key", action="append", default=None, metavar="KEY",
                      help="require `Authorization: Bearer KEY` on /v1 routes; repeat for several keys (a flag "
                           "shows in `ps`: prefer --api-key-file or TIDEFLOW_API_KEY, used when no key is given)")
    keys.add_argument("--api-key-file", default=None, metavar="FILE", help="API keys, one per line (# comments)")
    keys.add_argument("--rate-limit-rpm", type=int, default=None, metavar="N", help="requests per minute per key")
    keys.add_argument("--rate-limit-tpm", type=int, default=None, metavar="N",
                      help="tokens per minute per key (prompt + max_tokens reserved; what is not generated returns)")
    keys.add_argument("--rate-limit-concurrency", type=int, default=None, metavar="N",
                      help="requests in flight per key (without keys, the limits bound all clients together)")
    keys.add_argument("--breaker-ttft-s", type=float, default=None, metavar="S",
                      help="shed load (503) while most requests wait longer than S for their first output")
    keys.add_argument("--breaker-error-rate", type=float, default=None, metavar="R",
                      help="shed load (503) while more than this fraction of requests fail in the graph")
    keys.add_argument("--breaker-window-s", type=float, default=None, metavar="S",
                      help="seconds of requests the breaker judges (default 30)")
    keys.add_argument("--breaker-min-requests", type=int, default=None, metavar="N",
                      help="requests in the window before it judges (default 10)")
    keys.add_argument("--breaker-open-s", type=float, default=None, metavar="S",
                      help="seconds it sheds before one probe request goes through (default 10)")
    add_engine_args(serve)
    serve.set_defaults(func=_serve)

    batch = sub.add_parser("batch", help="generate for every row of parquet/jsonl/csv files with Ray Data; writes parquet")
    batch.add_argument("--input", required=True, help="a parquet, jsonl or csv file, a directory of them, or a glob")
    batch.add_argument("--output", required=True, help="output directory; a rerun on it skips the rows already written")
    batch.add_argument("--model", required=True, help="model directory")
    text = batch.add_mutually_exclusive_group()
    text.add_argument("--prompt-column", default=None, help="column of prompt text or token ids (default: prompt)")
    text.add_argument("--messages-column", default=None, help="column of chat conversations ([{role, content}, ...])")
    batch.add_argument("--id-column", default="row_id", help="column that keys rows (default: added as file:index)")
    batch.add_argument("--max-tokens", type=int, default=None,
                       help="default: the model's max_new_tokens (its generation config), else 256")
    batch.add_argument("--max-tokens-column", default=None, help="column of per-row max_tokens (null: --max-tokens)")
    batch.add_argument("--structured-outputs", default=None, metavar="JSON",
                       help='every row\'s output constraint: {"json": {schema}}, {"regex": ...}, {"choice": [...]}, '
                            '{"grammar": ...} or {"json_object": true}')
    batch.add_argument("--structured-outputs-column", default=None,
                       help="column of per-row constraints, as --structured-outputs (null: --structured-outputs)")
    batch.add_argument("--temperature", type=float, default=None,
                       help="default: the model's (its generation config), else 0 (greedy): reruns give the same text")
    batch.add_argument("--top-p", type=float, default=None, help="default: the model's, else 1")
    batch.add_argument("--seed", type=int, default=None, help="sampling seed; each row's is derived from it and its id")
    batch.add_argument("--batch-size", type=int, default=64, help="rows per actor call")
    batch.add_argument("--batches-per-actor", type=int, default=DEFAULT_BATCHES_PER_ACTOR,
                       help="batches in flight per actor, sharing its engine (default: %(default)s)")
    batch.add_argument("--concurrency", default="1", help="actors: N, or MIN,MAX to autoscale")
    batch.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor")
    batch.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor")
    add_engine_args(batch, seed=False)  # its --seed is the sampling seed
    batch.add_argument("--address", default=None, help="join this Ray cluster (default: RAY_ADDRESS or a local instance)")
    batch.set_defaults(func=_batch)

    bench = sub.add_parser("bench", help="benchmarks: `tideflow bench offline|graph|serve|kernels|batch|recovery|gpu-check --help`", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)

    graph = sub.add_parser("graph", help="load a graph's YAML file and validate it (compile)")
    graph.add_argument("file", help="the graph's YAML file")
    graph.add_argument("--print", action="store_true", help="print the compiled graph's stages and edges")
    graph.add_argument(
        "--cluster",
        default=None,
        help='nodes to check resources against, as JSON: \'[{"CPU": 8, "GPU": 1}]\' (default: this machine)',
    )
    graph.set_defaults(func=_graph)

    rep = sub.add_parser("replay", help="run a recorded request log against a graph; report the requests whose outputs differ")
    rep.add_argument("log_dir", help="a directory written by deploy(request_log=...)")
    rep.add_argument("--graph", default="colocated", help="colocated | disaggregated | a graph YAML file")
    rep.add_argument("--model", default=None, help="model directory (default: the one the log recorded)")
    rep.add_argument("--dtype", default=None, help="engine dtype for the model stages")
    rep.add_argument("--ray", action="store_true", help="deploy the graph on Ray (default: run it in-process)")
    rep.set_defaults(func=_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
