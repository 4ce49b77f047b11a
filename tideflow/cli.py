"""`tideflow demo | serve | bench | graph`: the command-line entry points (more subcommands join as they land)."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from tideflow.demo import run_demo

    run_demo(model=args.model, num_requests=args.num_requests, max_tokens=args.max_tokens, port=args.port)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from tideflow.serve.launcher import serve_forever

    engine_options = {k: v for k, v in (("dtype", args.dtype), ("max_model_len", args.max_model_len)) if v is not None}
    config = {
        "model": args.model,
        "graph": args.graph,
        "served_model_name": args.served_model_name,
        "num_replicas": args.replicas,
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
        "engine_options": engine_options,
    }
    try:
        return serve_forever(config, host=args.host, port=args.port, address=args.address)
    except ValueError as exc:  # bad arguments, found before anything starts
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _bench(args: argparse.Namespace) -> int:
    benches = {"offline": "tideflow.bench.offline", "graph": "tideflow.bench.graph", "serve": "tideflow.bench.serve",
               "kernels": "tideflow.bench.kernels"}
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tideflow", description="Serve and batch-run LLMs on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="serve the embedded default model and stream a few chats through it")
    demo.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    demo.add_argument("--num-requests", "--num-prompts", dest="num_requests", type=int, default=3,
                      help="streamed chat requests to send")
    demo.add_argument("--port", type=int, default=0, help="HTTP port (default: any free port)")
    demo.add_argument("--max-tokens", type=int, default=48)
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API with Ray Serve")
    serve.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    serve.add_argument("--graph", default="colocated", help="colocated | disaggregated | a graph YAML file")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free port)")
    serve.add_argument("--replicas", type=int, default=1, help="Serve replicas, each with its own graph")
    serve.add_argument("--address", default=None, help="join this Ray cluster (default: start a local Ray instance)")
    serve.add_argument("--served-model-name", default=None, help="the model name clients send (default: its directory's)")
    serve.add_argument("--max-ongoing-requests", type=int, default=64, help="per replica: requests in the graph")
    serve.add_argument("--max-queued-requests", type=int, default=64, help="per replica: requests waiting; then 429")
    serve.add_argument("--dtype", default=None, help="engine dtype: auto | float32 | float64 | bfloat16 | float16")
    serve.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    serve.set_defaults(func=_serve)

    bench = sub.add_parser("bench", help="benchmarks: `tideflow bench offline|graph|serve|kernels --help`", add_help=False)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
