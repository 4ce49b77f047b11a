"""The main job end to end: load the embedded default model, generate for a batch of prompts,
print the completions and the throughput."""

from __future__ import annotations

import time

DEMO_PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n\n",
    "class Queue:\n    \"\"\"",
    "The quick brown fox",
    "for i in range(10):",
    "# Parse the command line arguments",
    "Return the number of items in",
    "    def __init__(self, *args, **kwargs):",
]


def run_demo(model: str | None = None, num_prompts: int = 32, max_tokens: int = 48) -> dict:
    from tideflow import LLM, SamplingParams
    from tideflow.models.default import default_model_dir

    path = model or str(default_model_dir())
    print(f"tideflow demo: model {path}")
    llm = LLM(path, dtype="float32")
    prompts = [DEMO_PROMPTS[i % len(DEMO_PROMPTS)] for i in range(num_prompts)]
    params = [
        SamplingParams(temperature=0 if i % 2 == 0 else 0.8, top_p=0.95, seed=i, max_tokens=max_tokens)
        for i in range(num_prompts)
    ]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    num_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    for out in outputs[: len(DEMO_PROMPTS)]:
        print("-" * 72)
        print(f"prompt: {out.prompt!r}")
        print(f"output: {out.outputs[0].text!r}  [{out.outputs[0].finish_reason}]")
    print("-" * 72)
    rate = num_tokens / elapsed
    print(f"{len(outputs)} requests, {num_tokens} generated tokens in {elapsed:.2f} s: {rate:.1f} tokens/s")
    return {"requests": len(outputs), "tokens": num_tokens, "seconds": elapsed, "tokens_per_s": rate}
