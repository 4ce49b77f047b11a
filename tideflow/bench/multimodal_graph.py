"""`tideflow bench graph --graph multimodal`: the multimodal graph (an encoder pool in front
of the engine) against the colocated engine (which runs the vision tower itself), on the
same LLaVA-style model, requests and cores.

Each request is a one-image prompt; its image is drawn from a seeded pool smaller than the
request count, so images repeat the way product photos or screenshots do in real traffic,
and the encoders' feature cache gets hits. Greedy, every request generating exactly its
`max_tokens`, submitted all at once after a warm-up of two requests (with images outside the
pool); deployment is outside the timed run. Reported per system: output tokens/s, the ratio
to colocated, whether the tokens are equal, and for the multimodal graph the encoder side:
images seen, cache hits, and the seconds the encoders spent in the vision tower.

With the tiny test model the language model is as cheap as the vision tower, so this
measures what moving encoding to its own actors costs or gains on a small CPU machine, not
what it gains with a large vision tower on its own GPU.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path

PROMPT = "USER: <image>\nDescribe the picture. ASSISTANT:"


def multimodal_bench_model(path: str | os.PathLike | None = None) -> Path:
    """The tiny LLaVA (random weights, float32), written unless it is already there."""
    from tideflow.testing.tiny_models import write_tiny_model

    path = Path(path or Path(tempfile.gettempdir()) / "tideflow-bench" / "llava-tiny")
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        return path
    return write_tiny_model("llava", path, seed=0)


def image_pool(count: int, seed: int, size: int = 32) -> list[bytes]:
    """`count` distinct seeded noise images, PNG-encoded."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8), "RGB").save(buffer, format="PNG")
        pool.append(buffer.getvalue())
    return pool


def requests(num_requests: int, distinct_images: int, seed: int, min_output: int, max_output: int):
    """Seeded prompts (one image each, drawn from the pool) and greedy params."""
    import random

    from tideflow import SamplingParams

    rng = random.Random(seed)
    pool = image_pool(distinct_images, seed)
    prompts = [{"prompt": PROMPT, "multi_modal_data": {"image": [rng.choice(pool)]}} for _ in range(num_requests)]
    params = [SamplingParams(temperature=0, max_tokens=rng.randint(min_output, max_output), ignore_eos=True)
              for _ in range(num_requests)]
    return prompts, params


def _run(graph, prompts, params, warmup) -> tuple[float, list, dict]:
    handle = graph.deploy(recovery=False)
    try:
        handle.generate(*warmup)
        before = handle.stats()
        start = time.perf_counter()
        outputs = handle.generate(prompts, params)
        wall = time.perf_counter() - start
        after = handle.stats()
    finally:
        handle.shutdown()
    encoder = {}
    if "encode" in after:
        def total(stats, key):
            return sum(s[key] for s in stats["encode"])

        encoder = {k: total(after, k) - total(before, k) for k in ("images", "encoder_cache_hits", "encode_s")}
    return wall, [o.outputs[0].token_ids for o in outputs], encoder


def run_multimodal_bench(
    model_dir: str, *, encoders: int = 2, num_requests: int = 32, distinct_images: int = 8, seed: int = 0,
    dtype: str = "float32", min_output: int = 16, max_output: int = 64, json_path: str | None = None,
) -> dict:
    import ray

    from tideflow.graphs.builtin import colocated, multimodal

    if encoders < 1 or num_requests < 1 or distinct_images < 1:
        raise ValueError("encoders, num_requests and distinct_images must be at least 1")
    prompts, params = requests(num_requests, distinct_images, seed, min_output, max_output)
    warm_prompts, warm_params = requests(2, 2, seed + 1, 4, 4)
    cores = os.cpu_count() or 2
    if not ray.is_initialized():
        ray.init(num_cpus=cores + 1, include_dashboard=False, log_to_driver=False)
    builders = {  # the engine gets every core in both; the encoders share them
        "colocated": lambda: colocated(model_dir, dtype=dtype, num_cpus=cores, num_threads=cores),
        f"multimodal-{encoders}": lambda: multimodal(
            model_dir, encoders=encoders, encoder_cpus=1 / encoders, num_cpus=cores - 1, dtype=dtype, num_threads=cores,
        ),
    }
    results, tokens = {}, {}
    for name, build in builders.items():
        wall, tokens[name], encoder = _run(build(), prompts, params, (warm_prompts, warm_params))
        out_tokens = sum(len(t) for t in tokens[name])
        results[name] = {"wall_s": wall, "output_tokens": out_tokens, "output_tok_s": out_tokens / wall, **encoder}
    base = results["colocated"]
    for name, r in results.items():
        r["ratio_vs_colocated"] = r["output_tok_s"] / base["output_tok_s"]
        r["same_tokens_as_colocated"] = tokens[name] == tokens["colocated"]
    result = {
        "benchmark": "graph-multimodal", "model": model_dir, "encoders": encoders, "num_requests": num_requests,
        "distinct_images": distinct_images, "seed": seed, "min_output": min_output, "max_output": max_output,
        "cores": cores, "systems": results,
    }
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


def format_multimodal_table(result: dict) -> str:
    head = f"{'system':<14}{'tok/s':>9}{'vs colocated':>14}{'same tokens':>13}{'images':>8}{'cache hits':>12}{'encode s':>10}"
    lines = [head, "-" * len(head)]
    for name, r in result["systems"].items():
        enc = f"{r['images']:>8}{r['encoder_cache_hits']:>12}{r['encode_s']:>10.2f}" if "images" in r else f"{'-':>8}{'-':>12}{'-':>10}"
        lines.append(f"{name:<14}{r['output_tok_s']:>9.1f}{r['ratio_vs_colocated']:>13.2f}x"
                     f"{str(r['same_tokens_as_colocated']):>13}{enc}")
    return "\n".join(lines)
