"""The engine options of `tideflow serve` and `tideflow batch`, as command-line flags.

Named as vLLM names them where vLLM has them (`--max-num-seqs`, `--block-size`,
`--enable-prefix-caching/--no-enable-prefix-caching`, `-tp` ...), defined once here for both
subcommands. A flag left out passes nothing, so the engine's own default applies; a bad value is
a usage error naming the flag (exit 2) before anything starts.
"""

from __future__ import annotations

import argparse
import json

from tideflow.config import KERNEL_BACKENDS, generation_config_source
from tideflow.sampling_params import generation_config_defaults

DTYPES = ("auto", "float32", "float64", "bfloat16", "float16")
MODEL_IMPLS = ("auto", "tideflow", "transformers")


def _int_at_least(minimum: int):
    """An argparse type: an integer >= `minimum` (argparse names the flag when it is not)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive, _nonnegative = _int_at_least(1), _int_at_least(0)


def _generation_config(text: str) -> str:
    """An argparse type: "auto", "vllm" or a directory holding generation_config.json."""
    try:
        return generation_config_source(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("generation_config: ")) from None


def _override_generation_config(text: str) -> dict:
    """An argparse type: a JSON object of generation-config keys, '{"temperature": 0.5}'."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"temperature\": 0.5}}', got {text!r}")
    try:
        generation_config_defaults(value, "override", strict=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("override: ")) from None
    return value


def _cpu_bind(value: str) -> str:
    from tideflow.config import check_cpu_bind

    try:
        return check_cpu_bind(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_engine_args(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    """Add the engine flags to `parser` (`seed=False` where the subcommand's `--seed` already
    means the sampling seed, as in `tideflow batch`). Each flag stores under its engine option's
    name, default None (not given)."""
    group = parser.add_argument_group("engine options (default: the engine's)")
    group.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    group.add_argument("--dtype", default=None, choices=DTYPES, help="weights and activations dtype")
    group.add_argument("--max-model-len", type=_positive, default=None, help="context length (default: the model's)")
    group.add_argument("--max-num-seqs", type=_positive, default=None, help="sequences running at once")
    group.add_argument("--max-num-batched-tokens", type=_positive, default=None, help="token budget of one step")
    group.add_argument("--block-size", type=_positive, default=None, help="tokens per KV cache block")
    group.add_argument("--kv-cache-memory", "--kv-cache-memory-bytes", dest="kv_cache_memory_bytes", type=_positive,
                       default=None, help="bytes of KV cache per engine")
    group.add_argument("--num-gpu-blocks-override", dest="num_kv_blocks", type=_positive, default=None,
                       help="KV cache blocks, overriding what the memory allows")
    group.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                       help="reuse the KV blocks of shared prompt prefixes (default: on)")
    group.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=None,
                       help="split long prompts across steps (default: on)")
    group.add_argument("--tensor-parallel-size", "-tp", type=_positive, default=None, help="ranks per engine")
    group.add_argument("--kernel-backend", default=None, choices=KERNEL_BACKENDS,
                       help="tideflow's kernels (auto) or their torch references (torch)")
    group.add_argument("--model-impl", default=None, choices=MODEL_IMPLS, help="whose forward runs the model")
    group.add_argument("--cpu-bind", default=None, type=_cpu_bind,
                       help="cores the engine computes on: 'auto' (those idle when it starts) or a list like '0-1' "
                            "(default: no binding)")
    group.add_argument("--chat-template", default=None,
                       help="a Jinja chat template, or a file holding one, in place of the tokenizer's")
    group.add_argument("--generation-config", default=None, type=_generation_config,
                       help="request defaults: 'auto' takes the model's generation_config.json (temperature, top_p, "
                            "top_k, min_p, repetition_penalty, max_new_tokens) for the fields a request leaves unset, "
                            "'vllm' ignores it, a directory: its generation_config.json (default: auto)")
    group.add_argument("--override-generation-config", default=None, type=_override_generation_config,
                       help="generation-config keys laid over those defaults, as JSON: '{\"temperature\": 0.5}'")
    group.add_argument("--trust-remote-code", action="store_true", default=None, help="allow a checkpoint's own code")
    if seed:
        group.add_argument("--seed", type=_nonnegative, default=None, help="the engine's random seed")


ENGINE_ARG_NAMES = (
    "tokenizer", "dtype", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size",
    "kv_cache_memory_bytes", "num_kv_blocks", "enable_prefix_caching", "enable_chunked_prefill",
    "tensor_parallel_size", "kernel_backend", "model_impl", "trust_remote_code", "chat_template",
    "generation_config", "override_generation_config", "cpu_bind",
)


def engine_options(args: argparse.Namespace, *, seed: bool = True) -> dict:
    """The engine options the flags gave (those left out are absent)."""
    names = ENGINE_ARG_NAMES + (("seed",) if seed else ())
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
