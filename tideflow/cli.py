"""`tideflow demo | bench`: the command-line entry points (more subcommands join as they land)."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from tideflow.demo import run_demo

    run_demo(model=args.model, num_prompts=args.num_prompts, max_tokens=args.max_tokens)
    return 0


def _bench(args: argparse.Namespace) -> int:
    benches = {"offline": "tideflow.bench.offline", "graph": "tideflow.bench.graph"}
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

    demo = sub.add_parser("demo", help="run the main job end to end on the embedded default model")
    demo.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    demo.add_argument("--num-prompts", type=int, default=32)
    demo.add_argument("--max-tokens", type=int, default=48)
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="benchmarks: `tideflow bench offline|graph --help`", add_help=False)
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
