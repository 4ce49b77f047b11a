"""examples/serve_config.yaml is a valid Serve config whose application, built the way
`serve run` builds it (import_path + args), serves a disaggregated graph."""

from __future__ import annotations

import importlib
import inspect
import json
import pathlib
import urllib.request

import yaml

from tideflow import LLM, SamplingParams

ROOT = pathlib.Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "Write a function"}]


def test_serve_config_example_deploys_a_disaggregated_graph(serve_port, tiny_model_dir):
    from openai import OpenAI
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "examples" / "serve_config.yaml").read_text()))
    (app,) = config.applications
    assert app.import_path == "tideflow.serve:build_app" and app.args["graph"] == "disaggregated"
    module, _, attr = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert len(inspect.signature(builder).parameters) == 1  # what Serve asks of an app builder
    model = tiny_model_dir("llama")
    serve.run(builder({**app.args, "model": model}), name="example", route_prefix="/example")
    try:
        url = f"http://127.0.0.1:{serve_port}/example"
        with urllib.request.urlopen(f"{url}/health", timeout=30) as resp:
            assert json.loads(resp.read())["graph"].startswith("disaggregated-")
        client = OpenAI(base_url=f"{url}/v1", api_key="any", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["llama"]
        stream = client.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=8, temperature=0,
                                                stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        greedy = SamplingParams(temperature=0, max_tokens=8)
        expected = LLM(model, dtype="float32").chat(MESSAGES, greedy, use_tqdm=False)[0]
        assert text == expected.outputs[0].text
    finally:
        serve.delete("example")
