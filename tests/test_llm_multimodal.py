"""`LLM.generate` with images on the tiny LLaVA: float64 greedy tokens equal transformers'
`LlavaForConditionalGeneration.generate`, with prompt chunks that cut images, with the
prefix cache holding a prompt of the same text and another image, and on transformers'
own forward; plus the errors a request with images can get."""

from __future__ import annotations

import pytest

from tideflow import LLM, SamplingParams

from tests.testing.llava_reference import hf_generate, make_image, png

MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
ONE = "USER: <image>\nWhat is in the picture? ASSISTANT:"
TWO = "USER: <image> and <image>: which is brighter? ASSISTANT:"


@pytest.fixture(scope="module")
def path(tiny_model_dir):
    return tiny_model_dir("llava")


@pytest.fixture(scope="module")
def llm(path):
    # block_size 4 and a 12-token budget: prompt chunks start and end inside images, and the
    # prefix cache holds blocks of image tokens
    return LLM(path, dtype="float64", block_size=4, max_num_batched_tokens=12)


def _generate(llm, prompt: str, images: list, params=GREEDY):
    out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": images}}, params, use_tqdm=False)[0]
    return out.prompt_token_ids, out.outputs[0].token_ids


@pytest.mark.parametrize("prompt,seeds", [(ONE, [1]), (TWO, [2, 3])], ids=["one-image", "two-images"])
def test_equals_hf_generate(llm, path, prompt, seeds):
    images = [make_image(s) for s in seeds]
    ref_prompt, ref_tokens = hf_generate(path, prompt, images, MAX_TOKENS)
    prompt_ids, tokens = _generate(llm, prompt, images)
    assert prompt_ids == ref_prompt  # placeholders expanded as the processor does
    assert tokens == ref_tokens
    assert _generate(llm, prompt, [png(i) for i in images])[1] == ref_tokens  # encoded bytes too


def test_same_text_other_image_is_not_served_from_the_prefix_cache(llm, path):
    first, second = make_image(10), make_image(11)
    ref_first = hf_generate(path, ONE, [first], MAX_TOKENS)[1]
    ref_second = hf_generate(path, ONE, [second], MAX_TOKENS)[1]
    assert ref_first != ref_second  # the images matter to the model
    blocks = llm.engine.blocks
    assert _generate(llm, ONE, [first])[1] == ref_first
    hits = blocks.stats.hits
    assert _generate(llm, ONE, [second])[1] == ref_second
    # only the text before the image could be shared (one full block of 4 tokens at most)
    assert blocks.stats.hits - hits <= 4
    hits = blocks.stats.hits
    assert _generate(llm, ONE, [first])[1] == ref_first  # the same image again: served from the cache
    assert blocks.stats.hits - hits > 16


def test_transformers_forward_equals_hf(path):
    llm = LLM(path, dtype="float64", model_impl="transformers", max_num_batched_tokens=20)
    images = [make_image(4), make_image(5)]
    assert llm.engine.runner.packed is None
    assert _generate(llm, TWO, images)[1] == hf_generate(path, TWO, images, MAX_TOKENS)[1]


def test_text_only_prompt_runs_on_the_multimodal_model(llm, path):
    assert _generate(llm, "USER: hello ASSISTANT:", [])[1] == hf_generate(path, "USER: hello ASSISTANT:", [], MAX_TOKENS)[1]


def test_errors_name_the_field(llm, tiny_model_dir):
    image = make_image(0)
    with pytest.raises(ValueError, match=r"multi_modal_data: the prompt has 1 image placeholder\(s\) for 2 image\(s\)"):
        _generate(llm, ONE, [image, image])
    with pytest.raises(ValueError, match="image tokens .* but no images"):
        _generate(llm, ONE, [])
    with pytest.raises(ValueError, match="image 0 could not be decoded"):
        _generate(llm, ONE, [b"not an image"])
    with pytest.raises(ValueError, match="only 'image' is supported"):
        llm.generate({"prompt": ONE, "multi_modal_data": {"video": [image]}}, GREEDY, use_tqdm=False)
    assert not llm.engine.requests and not llm.engine.has_unfinished()  # nothing was left queued
    text = LLM(tiny_model_dir("llama"), dtype="float32", num_kv_blocks=16)
    with pytest.raises(ValueError, match=r"multi_modal_data: the model \(LlamaForCausalLM\) takes no images"):
        text.generate({"prompt": "hi", "multi_modal_data": {"image": [image]}}, GREEDY, use_tqdm=False)
