"""The main job end to end: serve the embedded default model over the OpenAI-compatible API
on Ray Serve, stream a few chat completions through the official `openai` client, printing
them as they arrive, then shut everything down."""

from __future__ import annotations

import time

DEMO_CHATS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain what a queue is, in one sentence.",
    "Parse the command line arguments of a small script.",
    "What does `import os` give a program?",
]


def run_demo(model: str | None = None, num_requests: int = 3, max_tokens: int = 48, port: int = 0) -> dict:
    from openai import OpenAI

    from tideflow.serve import start_server

    print("tideflow demo: starting the server (Ray, Ray Serve, a colocated graph) ...", flush=True)
    start = time.perf_counter()
    args = {"model": model, "engine_options": {"dtype": "float32"}}
    with start_server(args, port=port, app_name="tideflow-demo") as server:
        print(f"tideflow demo: model {server.model_name!r} served at {server.url}/v1 "
              f"(ready in {time.perf_counter() - start:.1f} s)", flush=True)
        client = OpenAI(base_url=f"{server.url}/v1", api_key="tideflow-demo", max_retries=0)
        tokens, start = 0, time.perf_counter()
        for i in range(num_requests):
            question = DEMO_CHATS[i % len(DEMO_CHATS)]
            print("-" * 72)
            print(f"user: {question}")
            print("assistant: ", end="", flush=True)
            stream = client.chat.completions.create(
                model=server.model_name, messages=[{"role": "user", "content": question}], stream=True,
                max_tokens=max_tokens, temperature=0.8, top_p=0.95, seed=i, stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    print(chunk.choices[0].delta.content, end="", flush=True)
                if chunk.usage is not None:
                    tokens += chunk.usage.completion_tokens
            print()
        elapsed = time.perf_counter() - start
        print("-" * 72)
        print(f"{num_requests} streamed chat requests, {tokens} generated tokens in {elapsed:.2f} s: "
              f"{tokens / elapsed:.1f} tokens/s", flush=True)
    print("tideflow demo: server stopped")
    return {"requests": num_requests, "tokens": tokens, "seconds": elapsed}
