"""`tideflow bench gpu-check`: a ~1B-parameter Llama on one CUDA GPU, offline, in bfloat16.

Writes a random Llama-shaped model (hidden 2048, 16 layers, 32 heads, 8 KV heads,
intermediate 5632, vocab 32000: 0.85B parameters, 1.7 GB in bfloat16) once, then

- runs a handful of greedy prompts through `tideflow.LLM(device="cuda")` and through
  `transformers`' `generate` on the same weights and compares the token ids;
- times tideflow's decode step (batch 1 and the whole handful) and sets it against its
  bandwidth floor: the bytes one decode step must read (every weight once, plus the K and V of
  every context) over the device's copy bandwidth (a large `Tensor.copy_`, read + write).

Without a CUDA device it prints "no CUDA device: skipping" and exits 0 (`make gpu-check`,
`tools/gpu_check.sh`, runs it after the kernel tests and `tideflow bench kernels`).
Exit 1: the engines disagree (a prompt's first token differs, or on average less than
`MIN_PREFIX_AGREEMENT` of the tokens match before the first difference; bfloat16 rounding
can make a long greedy run drift apart late, which is reported but not a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

NO_CUDA_MESSAGE = "no CUDA device: skipping the GPU check"

GPU_MODEL_NAME = "llama-1b-random"
GPU_MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    # a real Llama's init scale: softmaxes that are not one-hot, as in a trained model, so that
    # bfloat16 rounding rarely decides between two keys or two tokens
    "initializer_range": 0.02,
    "dtype": "bfloat16",
}
MIN_PREFIX_AGREEMENT = 0.5

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# -- the bandwidth floor (pure arithmetic, tested on CPU) --------------------------------------
def head_dim(config: Mapping[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def llama_weight_count(config: Mapping[str, Any]) -> dict[str, int]:
    """Parameters of a Llama-shaped model from its config: `embedding` (vocab x hidden),
    `layers` (attention, MLP and the two norms of every layer), `head` (final norm and, unless
    tied to the embedding, the LM head). No biases (Llama has none)."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    q_dim = config["num_attention_heads"] * head_dim(config)
    kv_dim = config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim(config)
    per_layer = h * q_dim + 2 * h * kv_dim + q_dim * h + 3 * h * inter + 2 * h
    embedding = config["vocab_size"] * h
    head = h + (0 if config.get("tie_word_embeddings", False) else config["vocab_size"] * h)
    return {"embedding": embedding, "layers": layers * per_layer, "head": head}


def decode_step_bytes(config: Mapping[str, Any], context_lens: Sequence[int], dtype_bytes: int = 2) -> dict[str, int]:
    """Bytes one decode step must read at least, for sequences attending to `context_lens`
    tokens each (the new token included): every layer and LM-head weight once, one embedding
    row per sequence (all of it when the LM head is tied to it), and the K and V of every
    context in every layer. Activations, the new K/V writes and the logits are left out."""
    counts = llama_weight_count(config)
    h = config["hidden_size"]
    tied = config.get("tie_word_embeddings", False)
    weights = counts["layers"] + counts["head"] + (counts["embedding"] if tied else len(context_lens) * h)
    kv_per_token = 2 * config["num_hidden_layers"] * config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim(config)
    weight_bytes = weights * dtype_bytes
    kv_bytes = sum(context_lens) * kv_per_token * dtype_bytes
    return {"weights": weight_bytes, "kv": kv_bytes, "total": weight_bytes + kv_bytes}


def mean_decode_contexts(prompt_lens: Sequence[int], steps: int) -> list[float]:
    """The mean context of each sequence over `steps` decode steps that follow its prefill:
    the first decode step attends to prompt + 1 tokens, the last to prompt + steps."""
    return [p + (steps + 1) / 2 for p in prompt_lens]


def floor_seconds(step_bytes: int, copy_bytes_per_s: float) -> float:
    """The decode step's time at the device's copy bandwidth (bytes moved per second, read and
    write counted: `tideflow.kernels.cuda.bench.copy_bandwidth`)."""
    return step_bytes / copy_bytes_per_s


def agreement(expected: Sequence[Sequence[int]], got: Sequence[Sequence[int]]) -> dict[str, Any]:
    """How far each of `got` follows `expected` before the first different token."""
    prefixes = []
    for e, g in zip(expected, got, strict=True):
        n = next((i for i, (a, b) in enumerate(zip(e, g)) if a != b), min(len(e), len(g)))
        prefixes.append(n)
    fractions = [p / max(len(e), 1) for p, e in zip(prefixes, expected)]
    identical = sum(list(e) == list(g) for e, g in zip(expected, got))
    return {
        "identical": identical,
        "prompts": len(expected),
        "matched_prefix": prefixes,
        "mean_prefix_fraction": sum(fractions) / max(len(fractions), 1),
        "first_tokens_agree": all(p > 0 for p, e in zip(prefixes, expected) if len(e)),
    }


def passed(agree: Mapping[str, Any]) -> bool:
    return bool(agree["first_tokens_agree"]) and agree["mean_prefix_fraction"] >= MIN_PREFIX_AGREEMENT


# -- the model ----------------------------------------------------------------------------------
def default_model_dir() -> Path:
    return Path(tempfile.gettempdir()) / "tideflow-bench" / GPU_MODEL_NAME


def _is_model(path: Path, config: Mapping[str, Any]) -> bool:
    try:
        written = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(written.get(k) == v for k, v in config.items()) and any(path.glob("*.safetensors"))


def gpu_model(path: str | os.PathLike, device: str = "cuda", config: Mapping[str, Any] = GPU_MODEL_CONFIG) -> Path:
    """Write the random 1B Llama (`config`; weights drawn on `device`, saved in the config's
    dtype) into `path` unless it is already there; written whole in a sibling directory, then
    renamed."""
    from tideflow.testing.tiny_models import write_tiny_model

    path = Path(path)
    if _is_model(path, config):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        write_tiny_model("llama", Path(tmp) / "model", seed=0, weights_dtype=config.get("dtype", "float32"),
                         init_device=device, **config)
        if path.exists():
            shutil.rmtree(path)
        (Path(tmp) / "model").rename(path)
    return path


def prompts(num: int, vocab_size: int, seed: int = 0, min_len: int = 16, max_len: int = 512) -> list[list[int]]:
    """`num` random prompts of token ids (special ids 0-4 left out), lengths spread over
    [min_len, max_len]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lens = np.linspace(min_len, max_len, num).astype(int)
    return [rng.integers(5, vocab_size, n).tolist() for n in lens]


# -- the run ------------------------------------------------------------------------------------
def hf_greedy(model_dir: Path, token_prompts: list[list[int]], max_tokens: int, dtype: str, device: str) -> list[list[int]]:
    """transformers' greedy `generate`, one prompt at a time (no padding). min_new_tokens keeps
    EOS out, as tideflow's min_tokens does."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    out = []
    with torch.no_grad():
        for p in token_prompts:
            ids = torch.tensor([p], device=device)
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens)
            out.append(gen[0, len(p):].tolist())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def copy_bandwidth(device: str) -> float:
    """Bytes per second (read + write) of a large copy on `device`: CUDA events on a GPU
    (`tideflow.kernels.cuda.bench.copy_bandwidth`), the best of a few wall-clock copies
    elsewhere."""
    import torch

    if device.startswith("cuda"):
        from tideflow.kernels.cuda.bench import copy_bandwidth as cuda_copy_bandwidth

        return cuda_copy_bandwidth(device)
    size = 64 << 20
    src = torch.ones(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * size / best


def _generate(llm, token_prompts, max_tokens):
    from tideflow import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, min_tokens=max_tokens)
    return llm.generate([{"prompt_token_ids": p} for p in token_prompts], params, use_tqdm=False)


def _token_ids(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def decode_step_seconds(llm, token_prompts, steps: int, repeats: int = 2) -> float:
    """Wall-clock seconds of one decode step of the whole batch, best of `repeats` runs after a
    warm-up: from the last request's first token (its prefill done) to the last one finished,
    over the `steps` decode steps between them (the requests' own metrics)."""
    _generate(llm, token_prompts, 1 + steps)
    best = float("inf")
    for _ in range(repeats):
        outs = _generate(llm, token_prompts, 1 + steps)
        first = max(o.metrics["first_token_time"] for o in outs)
        finished = max(o.metrics["finished_time"] for o in outs)
        best = min(best, (finished - first) / steps)
    return best


def run(
    model_dir: Path, num_prompts: int, max_tokens: int, decode_steps: int, *, device: str = "cuda",
    dtype: str = "bfloat16", max_prompt_len: int = 512,
) -> dict[str, Any]:
    """The comparison and the decode timings (see the module docstring). `device`, `dtype` and
    `max_prompt_len` let the CPU tests run the same path on a tiny model."""
    import torch
    from transformers import AutoConfig

    from tideflow import LLM
    from tideflow.bench.bench_model import model_info

    config = AutoConfig.from_pretrained(model_dir).to_dict()
    token_prompts = prompts(num_prompts, config["vocab_size"], max_len=max_prompt_len)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    result: dict[str, Any] = {"device": name, "dtype": dtype, "model": model_info(str(model_dir))}

    start = time.perf_counter()
    expected = hf_greedy(model_dir, token_prompts, max_tokens, dtype, device)
    result["hf_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    llm = LLM(str(model_dir), dtype=dtype, device=device, enable_prefix_caching=False, max_num_seqs=max(num_prompts, 1))
    got = _token_ids(_generate(llm, token_prompts, max_tokens))  # numba.cuda compiles its kernels here
    result["tideflow_seconds"] = time.perf_counter() - start
    result["agreement"] = agree = agreement(expected, got)
    result["distinct_tokens"] = len({t for seq in expected for t in seq})

    copy = copy_bandwidth(device)
    result["copy_GBps"] = copy / 1e9
    timings = []
    for batch in sorted({1, num_prompts}):
        subset = token_prompts[:batch]
        seconds = decode_step_seconds(llm, subset, decode_steps)
        contexts = mean_decode_contexts([len(p) for p in subset], decode_steps)
        floor = decode_step_bytes(config, [round(c) for c in contexts], _DTYPE_BYTES[dtype])
        floor_s = floor_seconds(floor["total"], copy)
        timings.append({"batch": batch, "step_ms": seconds * 1e3, "floor_ms": floor_s * 1e3,
                        "floor_weight_bytes": floor["weights"], "floor_kv_bytes": floor["kv"],
                        "floor_fraction": floor_s / seconds})
    result["decode"] = timings
    result["passed"] = passed(agree)
    return result


def format_result(result: Mapping[str, Any]) -> str:
    m, a = result["model"], result["agreement"]
    lines = [
        f"{result['device']}: random Llama, {m['params'] / 1e6:,.0f}M params (hidden {m['hidden_size']}, "
        f"{m['num_hidden_layers']} layers, {m['num_attention_heads']}/{m['num_key_value_heads']} heads), {result['dtype']}",
        f"greedy tokens vs transformers generate: {a['identical']}/{a['prompts']} prompts identical, "
        f"mean matched prefix {a['mean_prefix_fraction']:.0%} (per prompt {a['matched_prefix']}), "
        f"first tokens agree: {a['first_tokens_agree']}",
        f"copy bandwidth {result['copy_GBps']:.0f} GB/s",
    ]
    for t in result["decode"]:
        lines.append(
            f"decode step, batch {t['batch']}: {t['step_ms']:.2f} ms vs bandwidth floor {t['floor_ms']:.2f} ms "
            f"({(t['floor_weight_bytes'] + t['floor_kv_bytes']) / 1e6:,.1f} MB read) = {t['floor_fraction']:.0%} of the floor's speed"
        )
    lines.append("PASS" if result["passed"] else "FAIL: tideflow's greedy tokens disagree with transformers'")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tideflow bench gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the random 1B Llama, written on first use)")
    p.add_argument("--prompts", type=int, default=6, help="greedy prompts compared with transformers")
    p.add_argument("--max-tokens", type=int, default=48, help="tokens generated per compared prompt")
    p.add_argument("--decode-steps", type=int, default=64, help="decode steps timed per batch size")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    return p


def _write_json(path: str | None, result: Mapping[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.prompts < 1 or args.max_tokens < 1 or args.decode_steps < 1:
        print("error: --prompts, --max-tokens and --decode-steps must be >= 1", flush=True)
        return 2
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE, flush=True)
        _write_json(args.json, {"skipped": True, "reason": "no CUDA device"})
        return 0
    model_dir = Path(args.model) if args.model else gpu_model(default_model_dir())
    result = run(model_dir, args.prompts, args.max_tokens, args.decode_steps)
    print(format_result(result), flush=True)
    _write_json(args.json, {"skipped": False, **result})
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
