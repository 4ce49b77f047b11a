"""`chat_template` (`--chat-template` on the command line, as vLLM takes it: a template or a
file holding one) replaces the tokenizer's template on every path that renders chats: `LLM`,
graphs (the tokenizer stage), the server and batch jobs."""

from __future__ import annotations

import pytest

from tideflow import LLM, SamplingParams
from tideflow.config import engine_config

TEMPLATE = "{% for m in messages %}<<{{ m['role'] }}:{{ m['content'] }}>>{% endfor %}{% if add_generation_prompt %}=>{% endif %}"
CHAT = [{"role": "user", "content": "hi there"}]
RENDERED = "<<user:hi there>>=>"


def test_llm_chat_renders_with_the_given_template(tiny_model_dir):
    llm = LLM(tiny_model_dir("llama"), dtype="float32", chat_template=TEMPLATE)
    (out,) = llm.chat(CHAT, SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)
    assert out.prompt == RENDERED
    assert out.prompt_token_ids == llm.get_tokenizer().encode(RENDERED, add_special_tokens=False)
    (own,) = LLM(tiny_model_dir("llama"), dtype="float32").chat(CHAT, SamplingParams(max_tokens=2), use_tqdm=False)
    assert own.prompt != RENDERED  # without the option: the tokenizer's own template


def test_a_template_file_is_read_and_anything_else_is_a_clear_error(tmp_path):
    path = tmp_path / "chat.jinja"
    path.write_text(TEMPLATE)
    assert engine_config("/m", chat_template=str(path)).model.chat_template == TEMPLATE
    assert engine_config("/m", chat_template=TEMPLATE).model.chat_template == TEMPLATE
    with pytest.raises(ValueError, match="chat_template: .*neither a Jinja template nor a file"):
        engine_config("/m", chat_template=str(tmp_path / "missing.jinja"))


def test_graph_server_and_batch_render_with_the_given_template(tiny_model_dir, tmp_path):
    from tideflow.batch.backends import EngineBackend
    from tideflow.cli import build_parser
    from tideflow.engine_args import engine_options
    from tideflow.graphs import colocated
    from tideflow.serve.config import ServeConfig
    from tideflow.serve.deployment import build_graph
    from tideflow.serve.server import _model_info

    model = tiny_model_dir("llama")
    (out,) = colocated(model, dtype="float32", chat_template=TEMPLATE).run(
        [{"messages": CHAT}], SamplingParams(max_tokens=2, temperature=0))
    tokenizer = LLM(model, dtype="float32").get_tokenizer()
    assert out.prompt_token_ids == tokenizer.encode(RENDERED, add_special_tokens=False)  # the tokenizer stage rendered it

    path = tmp_path / "chat.jinja"
    path.write_text(TEMPLATE)
    options = engine_options(build_parser().parse_args(["serve", "--model", model, "--chat-template", str(path)]))
    config = ServeConfig.from_args({"model": model, "engine_options": options})
    info = _model_info(config, build_graph(config, None, "g"))
    assert info.prompts.encode_chat(CHAT)[0] == RENDERED

    assert EngineBackend(model, {"chat_template": str(path)}).prompts.encode_chat(CHAT)[0] == RENDERED
