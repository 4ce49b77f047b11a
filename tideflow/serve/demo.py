"""The main job end to end: serve the embedded default model (a small Llama trained on the
Python standard library, `tideflow.demo.default_model`) over the OpenAI-compatible API on Ray
Serve, stream greedy completions of a few Python-flavoured prompts through the official
`openai` client, printing them as they arrive, then shut everything down."""

from __future__ import annotations

import time

# Prompts in the demo model's world (stdlib source): a code or docstring opening each. None
# ends in a space: byte-level BPE glues a space to the word after it, so "def " would leave the
# model to continue mid-token.
DEMO_PROMPTS = [
    "import os\nimport sys\n\n\ndef main",
    'def get_config(path):\n    """Return the',
    'class Error(Exception):\n    """',
    'def split(s, sep=None):\n    """Split the string',
]
_RULE = "-" * 72


def run_demo(model: str | None = None, num_requests: int = 3, max_tokens: int = 48, port: int = 0) -> dict:
    """Serve `model` (default: the embedded default model), stream `num_requests` greedy
    completions (the prompts of `DEMO_PROMPTS`, in turn) of at most `max_tokens` tokens each,
    print them and the decode rate; return {"requests", "tokens", "seconds"}."""
    if num_requests < 1 or max_tokens < 1:
        raise ValueError(f"num_requests and max_tokens must be at least 1, got {num_requests} and {max_tokens}")
    from openai import OpenAI

    from tideflow.serve import start_server

    print("tideflow demo: starting the server (Ray, Ray Serve, a colocated graph) ...", flush=True)
    start = time.perf_counter()
    args = {"model": model, "engine_options": {"dtype": "float32"}}
    with start_server(args, port=port, app_name="tideflow-demo") as server:
        print(f"tideflow demo: model {server.model_name!r} served at {server.url}/v1 "
              f"(ready in {time.perf_counter() - start:.1f} s); greedy completions follow, "
              "each prompt first, then the model's text", flush=True)
        client = OpenAI(base_url=f"{server.url}/v1", api_key="tideflow-demo", max_retries=0)
        tokens, start = 0, time.perf_counter()
        for i in range(num_requests):
            prompt = DEMO_PROMPTS[i % len(DEMO_PROMPTS)]
            print(f"{_RULE}\nprompt {i + 1}: {prompt!r}\n{_RULE}")
            print(prompt, end="", flush=True)
            stream = client.completions.create(
                model=server.model_name, prompt=prompt, stream=True, max_tokens=max_tokens, temperature=0.0,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    print(chunk.choices[0].text, end="", flush=True)
                if chunk.usage is not None:
                    tokens += chunk.usage.completion_tokens
            print()
        elapsed = time.perf_counter() - start
        print(_RULE)
        print(f"{num_requests} streamed greedy completions, {tokens} generated tokens in {elapsed:.2f} s: "
              f"{tokens / elapsed:.1f} tokens/s", flush=True)
    print("tideflow demo: server stopped")
    return {"requests": num_requests, "tokens": tokens, "seconds": elapsed}
