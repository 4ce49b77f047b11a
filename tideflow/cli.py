"""`tideflow demo | bench`: the command-line entry points (more subcommands join as they land)."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from tideflow.demo import run_demo

    run_demo(model=args.model, num_prompts=args.num_prompts, max_tokens=args.max_tokens)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from tideflow.bench.offline import main as offline_main

    return offline_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tideflow", description="Serve and batch-run LLMs on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main job end to end on the embedded default model")
    demo.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    demo.add_argument("--num-prompts", type=int, default=32)
    demo.add_argument("--max-tokens", type=int, default=48)
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="benchmarks: `tideflow bench offline --help`", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
