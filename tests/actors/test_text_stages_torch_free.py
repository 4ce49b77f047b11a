"""The text-only processes never import torch or transformers: the tokenizer and detokenizer
stages (their Ray actors in a deployed graph, asked for their own `sys.modules`), the server's
`ModelInfo` and grammar check, and a batch actor's prompt path and grammar check (in a fresh
interpreter). The engine actor of the
same graph does import torch, which shows the probe sees it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers")

# Every text-only entry point, one after the other, in one fresh interpreter.
_TEXT_PATHS = """
import json, sys
import pyarrow as pa
from tideflow.actors.detokenizer import Detokenizer
from tideflow.actors.tokenizer import Tokenizer
from tideflow.batch.backends import GraphBackend
from tideflow.batch.prompts import batch_prompts
from tideflow.runtime.dataflow.role import StageContext
from tideflow.runtime.dataflow.stage_config import parse_stage_config
from tideflow.runtime.edges import schemas
from tideflow.sampling_params import SamplingParams
from tideflow.serve.model_info import ModelInfo

model = sys.argv[1]
chat = [{"role": "user", "content": "Hello there"}]
tok = Tokenizer(StageContext("g", "tokenize", 0, parse_stage_config("tokenize", {"model": model})))
rows = [{"request_id": "a", "prompt": None, "messages": json.dumps(chat), "prompt_token_ids": None,
         "sampling": schemas.params_to_row(SamplingParams()), "arrival_time": 0.0, "images": None},
        {"request_id": "b", "prompt": "Once upon a time", "messages": None, "prompt_token_ids": None,
         "sampling": schemas.params_to_row(SamplingParams()), "arrival_time": 0.0, "images": None}]
tok.push(pa.RecordBatch.from_pylist(rows, schema=schemas.REQUESTS))
(out,) = tok.poll()
assert out.batch.column("error").null_count == 2, out.batch.column("error")
ids = out.batch.column("prompt_token_ids")[0].as_py()
detok = Detokenizer(StageContext("g", "detokenize", 0, parse_stage_config("detokenize", {"model": model})))
assert detok.detok.decode(ids, skip_special_tokens=False)
info = ModelInfo.load("m", model)
assert info.chat_ids(chat) == ids and info.token_text(ids[-1]) and info.decode(ids)
backend = GraphBackend(None, model, {})
got = batch_prompts(pa.table({"p": pa.array([[1, 2, 3], None, [4]], pa.list_(pa.int32()))}), backend.prompts, prompt_column="p")
assert got.token_ids == [[1, 2, 3], None, [4]], got
assert batch_prompts(pa.table({"m": [json.dumps(chat)]}), backend.prompts, messages_column="m").token_ids == [ids]
# the server's and the graph batch path's grammar checks (structured outputs) compile without a model
from tideflow.serve.response_format import request_constraint
from tideflow.serve.protocol import StructuredOutputsField
assert request_constraint(None, StructuredOutputsField.model_validate({"json": {"type": "object"}})).kind == "json"
assert backend.check([1, 2], SamplingParams(structured_outputs={"regex": "a(b"})).startswith("structured_outputs.regex")
print(json.dumps({name: name in sys.modules for name in ("torch", "transformers", "tokenizers", "jinja2")}))
"""


def test_text_entry_points_import_neither_torch_nor_transformers(tiny_model_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _TEXT_PATHS, tiny_model_dir("llama")], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {"torch": False, "transformers": False, "tokenizers": True, "jinja2": True}


def _modules(actor) -> dict[str, bool]:
    """Which of torch, transformers, tokenizers the actor's own process has imported."""
    import ray

    probe = lambda _self: {name: name in sys.modules for name in (*HEAVY, "tokenizers")}  # noqa: E731
    return ray.get(actor.__ray_call__.remote(probe), timeout=60)


def test_a_deployed_graphs_tokenizer_and_detokenizer_actors_have_no_torch(ray_session, tiny_model_dir):
    from tideflow import SamplingParams
    from tideflow.graphs.builtin import colocated
    from tideflow.runtime.dataflow.executor import NAMESPACE
    from tideflow.runtime.engine.prompt_processor import PromptProcessor

    handle = colocated(tiny_model_dir("llama"), dtype="float32", name="torchfree").deploy(recovery=False)
    try:
        chat = [{"role": "user", "content": "Hi"}]  # the tokenizer stage renders it, the detokenizer decodes
        (out,) = handle.generate([{"messages": chat}], SamplingParams(max_tokens=3))
        assert out.prompt_token_ids == PromptProcessor.load(tiny_model_dir("llama")).encode_chat(chat)[1]
        assert len(out.outputs[0].token_ids) == 3
        actor = lambda stage: ray_session.get_actor(f"torchfree/{stage}/0", namespace=NAMESPACE)  # noqa: E731
        for stage in ("tokenize", "detokenize"):
            assert _modules(actor(stage)) == {"torch": False, "transformers": False, "tokenizers": True}, stage
        assert _modules(actor("engine"))["torch"]  # the probe does see torch where it is
    finally:
        handle.shutdown()
