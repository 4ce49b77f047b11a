"""Generation defaults as vLLM applies them: a model's generation_config.json (temperature,
top_p, top_k, min_p, repetition_penalty, max_new_tokens) is the default of the sampling fields
a request leaves unset, its eos ids stop sequences, and `generation_config` ("auto" | "vllm" |
a directory) with `override_generation_config` chooses which, on every path: `LLM`, the
server, batch jobs and graphs. A request that sets a field (temperature 0 included) keeps it."""

from __future__ import annotations

import json
import shutil

import pytest

from tideflow import LLM, SamplingParams
from tideflow.config import engine_config
from tideflow.models.generation_defaults import generation_defaults, load_generation_defaults
from tideflow.testing.tiny_models import BOS_ID, EOS_ID, PAD_ID

PROMPTS = ["def add(a, b):", "The quick brown fox", "import os\n"]
MODEL_DEFAULTS = SamplingParams(temperature=0.7, top_k=5, max_tokens=3)  # what model_dir's file sets
OTHER_DEFAULTS = SamplingParams(temperature=0.3, top_p=0.5, max_tokens=4)  # what other_dir's file sets


def _write(path, **fields) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "generation_config.json").write_text(json.dumps(fields))
    return str(path)


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def greedy(plain):
    """The plain model's greedy tokens of PROMPTS[0] (its generation config names no sampling fields)."""
    llm = LLM(plain, dtype="float32")
    assert llm.get_default_sampling_params() == SamplingParams()
    return llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0].outputs[0].token_ids


@pytest.fixture(scope="module")
def extra_eos(greedy) -> tuple[int, int]:
    """(position, id) of the first greedy token of PROMPTS[0] after the first that none before it
    equals: named as an extra eos id, it stops the greedy completion right there."""
    position = next(i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i] and greedy[i] != EOS_ID)
    return position, greedy[position]


@pytest.fixture(scope="module")
def model_dir(plain, extra_eos, tmp_path_factory):
    """The tiny Llama with a generation config that sets sampling defaults and an extra eos id."""
    path = tmp_path_factory.mktemp("gen") / "llama"
    shutil.copytree(plain, path)
    return _write(path, bos_token_id=BOS_ID, pad_token_id=PAD_ID, eos_token_id=[EOS_ID, extra_eos[1]],
                  temperature=0.7, top_k=5, max_new_tokens=3, do_sample=True, max_length=99)


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    """A directory holding only a generation config (for generation_config=DIR)."""
    return _write(tmp_path_factory.mktemp("other") / "gen", temperature=0.3, top_p=0.5, max_new_tokens=4)


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(model_dir, dtype="float32")


# -- which defaults -------------------------------------------------------------------------------
def test_auto_vllm_directory_and_override_choose_the_defaults(model_dir, other_dir, plain, extra_eos):
    auto = load_generation_defaults(model_dir)
    assert auto.sampling_params() == MODEL_DEFAULTS  # do_sample, max_length ...: ignored, as vLLM ignores them
    assert auto.eos_token_ids == tuple(sorted({EOS_ID, extra_eos[1]}))
    vllm = load_generation_defaults(model_dir, "vllm")
    assert vllm.sampling_params() == SamplingParams()
    assert vllm.eos_token_ids == auto.eos_token_ids  # vLLM still reads the eos ids from the model's file
    other = load_generation_defaults(model_dir, other_dir)
    assert other.sampling_params() == OTHER_DEFAULTS and other.eos_token_ids == ()
    over = load_generation_defaults(model_dir, "auto", {"temperature": 0.5, "min_p": 0.1})
    assert over.sampling_params() == MODEL_DEFAULTS.replace(temperature=0.5, min_p=0.1)
    assert load_generation_defaults(model_dir, "vllm", {"max_new_tokens": 9}).sampling_params() == SamplingParams(max_tokens=9)
    assert load_generation_defaults(plain).sampling_params() == SamplingParams()  # eos ids only: no sampling defaults
    base = SamplingParams(max_tokens=256, temperature=0.0, seed=4)
    assert auto.sampling_params(base) == base.replace(temperature=0.7, top_k=5, max_tokens=3)
    # the options travel in the engine config, so every stage reads the same defaults
    model = engine_config(model_dir, generation_config=other_dir, override_generation_config='{"top_k": 2}').model
    assert generation_defaults(model).sampling_params() == OTHER_DEFAULTS.replace(top_k=2)


def test_bad_generation_configs_are_clear_errors(model_dir, tmp_path):
    with pytest.raises(ValueError, match="generation_config: .*no directory"):
        engine_config(model_dir, generation_config=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="without generation_config.json"):
        load_generation_defaults(model_dir, str(tmp_path))
    with pytest.raises(ValueError, match="unknown key.*'do_sample'"):
        engine_config(model_dir, override_generation_config={"do_sample": True})
    with pytest.raises(ValueError, match="override_generation_config: not valid JSON"):
        engine_config(model_dir, override_generation_config="{temperature: 1}")
    with pytest.raises(ValueError, match="override_generation_config: temperature must be non-negative"):
        engine_config(model_dir, override_generation_config={"temperature": -1})
    bad = _write(tmp_path / "bad", top_p=0)
    with pytest.raises(ValueError, match=r"generation_config.json: top_p must be in \(0, 1\].*--generation-config vllm"):
        load_generation_defaults(model_dir, bad)
    _write(tmp_path / "float", max_new_tokens=2.5)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        load_generation_defaults(model_dir, str(tmp_path / "float"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the generation config"):
        load_generation_defaults(model_dir, str(tmp_path / "broken"))


# -- LLM ------------------------------------------------------------------------------------------
def test_llm_without_sampling_params_takes_the_models_defaults(llm, caplog):
    assert llm.get_default_sampling_params() == MODEL_DEFAULTS
    outs = llm.generate(PROMPTS, use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) <= 3 for o in outs)  # max_new_tokens
    assert any(o.outputs[0].finish_reason == "length" and len(o.outputs[0].token_ids) == 3 for o in outs)
    (chat,) = llm.chat([{"role": "user", "content": "hi"}], use_tqdm=False)
    assert len(chat.outputs[0].token_ids) <= 3
    # an explicit SamplingParams() is taken as it is (16 tokens), as vLLM takes it
    (explicit,) = llm.generate(PROMPTS[1], SamplingParams(ignore_eos=True), use_tqdm=False)
    assert len(explicit.outputs[0].token_ids) == 16


def test_llm_logs_the_defaults_it_applies(model_dir, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="tideflow.models.generation_defaults"):
        llm = LLM(model_dir, dtype="float32", generation_config="vllm", override_generation_config={"top_p": 0.9})
    assert llm.get_default_sampling_params() == SamplingParams(top_p=0.9)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "tideflow.models.generation_defaults"]
    assert "LLM" in line and "override_generation_config" in line and "top_p=0.9" in line


def test_the_generation_configs_eos_ids_stop_greedy_decoding(llm, greedy, extra_eos):
    position, token = extra_eos
    (out,) = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    assert out.outputs[0].token_ids == greedy[:position + 1] and out.outputs[0].finish_reason == "stop"
    (past,) = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert past.outputs[0].token_ids == greedy
    assert token in llm.engine.eos_token_ids and EOS_ID in llm.engine.eos_token_ids


def test_a_named_directory_replaces_the_models_file_eos_ids_included(model_dir, other_dir, greedy, extra_eos):
    llm = LLM(model_dir, dtype="float32", generation_config=other_dir)
    assert llm.get_default_sampling_params() == OTHER_DEFAULTS
    assert extra_eos[1] not in llm.engine.eos_token_ids  # other_dir names none; the model and tokenizer's remain
    assert EOS_ID in llm.engine.eos_token_ids
    (out,) = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    assert out.outputs[0].token_ids == greedy


# -- the server -----------------------------------------------------------------------------------
def _completion(**body):
    from tideflow.serve.protocol import CompletionRequest

    return CompletionRequest.model_validate({"prompt": PROMPTS[0], **body}, strict=True)


def _chat(**body):
    from tideflow.serve.protocol import ChatCompletionRequest

    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **body}, strict=True)


def test_server_params_take_the_models_defaults_for_unset_fields_only(model_dir, other_dir):
    from tideflow.serve.model_info import ModelInfo
    from tideflow.serve.prepare import prepare_chat, prepare_completion

    info = ModelInfo.load("m", model_dir)
    params = prepare_completion(_completion(), info).params
    assert (params.temperature, params.top_k, params.max_tokens, params.top_p) == (0.7, 5, 3, 1.0)
    greedy = prepare_completion(_completion(temperature=0), info).params
    assert greedy.greedy and greedy.temperature == 0 and greedy.max_tokens == 3
    given = prepare_completion(_completion(temperature=1.2, top_k=0, max_tokens=10, top_p=0.8), info).params
    assert (given.temperature, given.top_k, given.max_tokens, given.top_p) == (1.2, 0, 10, 0.8)
    assert prepare_completion(_completion(max_tokens=None), info).params.max_tokens is None  # null: the whole context
    chat = prepare_chat(_chat(), info).params
    assert (chat.temperature, chat.top_k, chat.max_tokens) == (0.7, 5, 3)
    assert prepare_chat(_chat(max_completion_tokens=7), info).params.max_tokens == 7

    own = ModelInfo.load("m", model_dir, generation_config="vllm")  # the API's own defaults
    params = prepare_completion(_completion(), own).params
    assert (params.temperature, params.top_k, params.max_tokens) == (1.0, 0, 16)
    assert prepare_chat(_chat(), own).params.max_tokens is None
    other = ModelInfo.load("m", model_dir, generation_config=other_dir, override_generation_config={"top_k": 2})
    params = prepare_completion(_completion(), other).params
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (0.3, 0.5, 2, 4)

    # the model's max_new_tokens is cut to the room the prompt leaves, not a 400
    short = ModelInfo.load("m", model_dir, max_model_len=12, override_generation_config={"max_new_tokens": 50})
    assert prepare_completion(_completion(prompt=list(range(10, 20))), short).params.max_tokens == 2


class _Handle:
    """Stands in for a deployed graph: runs each request on an in-process LLM and records its params."""

    def __init__(self, llm):
        self.llm, self.params = llm, []

    async def submit_deltas(self, prompt, params):
        from tideflow.runtime.dataflow.collector import CompletionDelta, OutputDelta

        self.params.append(params)
        (out,) = self.llm.generate([prompt], params, use_tqdm=False)
        yield OutputDelta(out.request_id, True, [
            CompletionDelta(c.index, c.token_ids, c.text, None, None, c.finish_reason, c.stop_reason)
            for c in out.outputs
        ], prompt_token_ids=out.prompt_token_ids)


class _Request:
    def __init__(self, body: dict):
        self.headers, self.scope, self._body = {"content-type": "application/json"}, {}, json.dumps(body).encode()

    async def body(self) -> bytes:
        return self._body


def test_a_server_request_without_temperature_samples_with_the_models_and_temperature_0_stays_greedy(model_dir, llm):
    import asyncio

    from tideflow.cli import build_parser
    from tideflow.engine_args import engine_options
    from tideflow.serve.config import ServeConfig
    from tideflow.serve.deployment import build_graph
    from tideflow.serve.server import OpenAIServer, _model_info

    args = build_parser().parse_args(["serve", "--model", model_dir, "--override-generation-config", '{"top_k": 4}'])
    config = ServeConfig.from_args({"model": model_dir, "engine_options": engine_options(args)}).resolved()
    graph = build_graph(config, None, "g")
    assert graph.compile().configs["engine"].engine.model.override_generation_config == (("top_k", 4),)
    info = _model_info(config, graph)
    handle = _Handle(llm)
    server = OpenAIServer(config, handle, info)

    def complete(body: dict) -> dict:
        response = asyncio.run(server.generate(_Request({"prompt": PROMPTS[1], **body}), "completion"))
        return json.loads(response.body)

    complete({})
    assert handle.params[-1] == MODEL_DEFAULTS.replace(top_k=4)
    text = complete({"temperature": 0})["choices"][0]["text"]
    assert handle.params[-1].greedy and handle.params[-1].max_tokens == 3
    (expected,) = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    assert text == expected.outputs[0].text


def test_serve_start_up_rejects_a_bad_generation_config(model_dir, tmp_path, capsys):
    from tideflow.cli import build_parser
    from tideflow.serve.config import ServeConfig

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--generation-config", str(tmp_path / "nope")])
    assert exit_.value.code == 2 and "--generation-config" in capsys.readouterr().err
    for value in ("{bad", "[1]", '{"do_sample": true}', '{"top_p": 2}'):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--override-generation-config", value])
        assert "--override-generation-config" in capsys.readouterr().err
    # `serve run` args and config files skip argparse: the config fails before anything starts
    with pytest.raises(ValueError, match="generation_config: .*no directory"):
        ServeConfig.from_args({"model": model_dir, "engine_options": {"generation_config": str(tmp_path / "x")}}).resolved()
    with pytest.raises(ValueError, match="unknown key"):
        ServeConfig.from_args({"model": model_dir, "engine_options": {"override_generation_config": {"seed": 1}}}).resolved()


# -- engine args, graphs and batch ------------------------------------------------------------------
def test_the_flags_parse_as_vllm_names_them(model_dir, other_dir):
    from tideflow.cli import build_parser
    from tideflow.engine_args import engine_options

    for command, extra in (("serve", []), ("batch", ["--input", "x", "--output", "o", "--model", model_dir])):
        args = build_parser().parse_args([command, *extra, "--generation-config", other_dir,
                                          "--override-generation-config", '{"temperature": 0.5}'])
        assert engine_options(args, seed=command == "serve") == {
            "generation_config": other_dir, "override_generation_config": {"temperature": 0.5}}
        args = build_parser().parse_args([command, *extra, "--generation-config", "vllm"])
        assert engine_options(args, seed=command == "serve") == {"generation_config": "vllm"}


def test_graph_stages_take_the_options_from_python_and_yaml(model_dir, other_dir, tmp_path):
    from tideflow.graphs import Graph, colocated

    compiled = colocated(model_dir, generation_config=other_dir, override_generation_config={"top_k": 3}).compile()
    model = compiled.configs["engine"].engine.model
    assert (model.generation_config, model.override_generation_config) == (other_dir, (("top_k", 3),))
    path = tmp_path / "g.yaml"
    path.write_text(f"""name: g
stages:
  - name: engine
    actor: engine
    options:
      model: {model_dir}
      generation_config: vllm
      override_generation_config: {{temperature: 0.1}}
""")
    model = Graph.from_yaml(path).compile().configs["engine"].engine.model
    assert (model.generation_config, dict(model.override_generation_config)) == ("vllm", {"temperature": 0.1})
    with pytest.raises(ValueError, match="override_generation_config' must be a mapping"):
        colocated(model_dir, override_generation_config=5).compile()


def test_batch_rows_take_the_models_defaults_unless_given(model_dir, monkeypatch):
    import pyarrow as pa

    from tideflow import cli
    from tideflow.batch.generator import BatchGenerator
    from tideflow.batch.run import generator_spec

    spec = generator_spec(model_dir, engine_options={"dtype": "float32"})
    assert spec.sampling_params == MODEL_DEFAULTS
    given = SamplingParams(temperature=0, max_tokens=5)
    assert generator_spec(model_dir, sampling_params=given).sampling_params == given
    out = BatchGenerator(spec).generate(pa.table({"row_id": ["a", "b"], "prompt": PROMPTS[:2]}))
    assert all(n <= 3 for n in out.column("num_generated_tokens").to_pylist())

    seen = {}

    def run_job(*args, sampling_params, **kwargs):
        seen["params"] = sampling_params
        raise ValueError("stop here")

    monkeypatch.setattr("tideflow.batch.run_job", run_job)
    job = ["batch", "--input", "x.jsonl", "--output", "o", "--model", model_dir]
    assert cli.main(job) == 2
    # flags left out: the model's defaults, else the batch's own (greedy, 256 tokens)
    assert seen["params"] == SamplingParams(temperature=0.7, top_k=5, max_tokens=3, top_p=1.0)
    assert cli.main([*job, "--temperature", "0", "--max-tokens", "6", "--seed", "3"]) == 2
    assert seen["params"] == SamplingParams(temperature=0.0, top_k=5, max_tokens=6, seed=3)
    assert cli.main([*job, "--generation-config", "vllm"]) == 2
    assert seen["params"] == SamplingParams(temperature=0.0, max_tokens=256)
