"""The embedded default model (`tideflow/demo/demo_model/`, trained by
`tools/train_demo_model.py`): it ships with the package within the issue's size limits, loads
through the normal loading path, decodes greedily the same tokens every time and the same as
`transformers`, and has learned the standard library: its perplexity on held-out stdlib files
is far below that of random weights and below the best any context-free model could reach."""

from __future__ import annotations

import collections
import json
import math

import pytest
import torch
from safetensors import safe_open

from tideflow import LLM, SamplingParams
from tideflow.serve.demo import DEMO_PROMPTS
from tideflow.demo import corpus, default_model as default
from tideflow.models import load_model, load_tokenizer
from tideflow.demo.default_model import default_model_dir

SEQ_LEN = 256  # the model's training context
HELDOUT_WINDOWS = 16  # 4096 held-out tokens: a second of CPU per model


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(default_model_dir())


def test_default_model_ships_inside_the_package_within_limits(model_dir):
    path = default_model_dir()
    assert path == default.DEFAULT_MODEL_DIR and path.parent.name == "demo" and path.parent.parent.name == "tideflow"
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "bfloat16"
    weights = path / "model.safetensors"
    assert weights.stat().st_size <= 30 * 2**20
    with safe_open(weights, "pt") as st:
        dtypes = {st.get_slice(k).get_dtype() for k in st.keys()}
        params = sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    assert dtypes == {"BF16"} and params <= 15_000_000, (dtypes, params)
    card = (path / "README.md").read_text()
    for fact in ("tools/train_demo_model.py", "standard library", "Held-out perplexity", "Final train loss"):
        assert fact in card


def test_a_missing_model_raises_an_error_that_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(default, "DEFAULT_MODEL_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no config\.json in .*train_demo_model\.py"):
        default_model_dir()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        default_model_dir()


def test_greedy_output_is_deterministic_and_matches_transformers(model_dir):
    # float64, the correctness oracle (DESIGN.md): no near-tie can flip a greedy choice
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    llm = LLM(model_dir, dtype="float64")
    runs = [[list(o.outputs[0].token_ids) for o in llm.generate(DEMO_PROMPTS, params, use_tqdm=False)] for _ in range(2)]
    assert runs[0] == runs[1]  # a second run on the same engine: the same tokens
    model, _ = load_model(model_dir, dtype="float64")
    tokenizer = load_tokenizer(model_dir)
    for prompt, ids in zip(DEMO_PROMPTS, runs[0]):
        prompt_ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
        with torch.no_grad():
            ref = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=24,
                                 min_new_tokens=24, do_sample=False)
        assert ids == ref[0, prompt_ids.shape[1]:].tolist(), prompt


def test_heldout_perplexity_is_far_below_random_weights(model_dir):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_dir)
    docs = corpus.read_documents(corpus.stdlib_files("heldout"), max_chars=HELDOUT_WINDOWS * SEQ_LEN * 5)
    ids = corpus.token_stream(tokenizer, docs, tokenizer.eos_token_id)[: HELDOUT_WINDOWS * SEQ_LEN]
    assert len(ids) == HELDOUT_WINDOWS * SEQ_LEN
    trained, _ = load_model(model_dir, dtype="float32")
    torch.manual_seed(0)
    random = AutoModelForCausalLM.from_config(trained.config, dtype=torch.float32).eval()
    trained_ppl = corpus.perplexity(trained, ids, SEQ_LEN)
    random_ppl = corpus.perplexity(random, ids, SEQ_LEN)
    # The absolute bound: the perplexity of the sample's own unigram distribution, the best any
    # model that ignores context could score, even one fitted to this very sample.
    counts = collections.Counter(ids)
    unigram_ppl = math.exp(-sum(c * math.log(c / len(ids)) for c in counts.values()) / len(ids))
    message = (f"held-out perplexity over {len(ids)} tokens: trained {trained_ppl:.1f}, random weights "
               f"{random_ppl:.1f}, the sample's own unigram distribution {unigram_ppl:.1f}")
    print(message)
    assert trained_ppl < random_ppl / 10 and trained_ppl < unigram_ppl, message
