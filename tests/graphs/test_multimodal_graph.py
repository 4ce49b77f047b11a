"""The multimodal graph deployed on Ray (tokenizer -> 2 encoders -> engine -> detokenizer):
float64 greedy tokens equal transformers' LLaVA `generate` for one and two images and for a
chat conversation with an image; repeated images hit the encoders' feature cache; a bad
image fails its own request only."""

from __future__ import annotations

import pytest

from tideflow import SamplingParams
from tideflow.graphs.builtin import multimodal
from tideflow.runtime.dataflow.collector import RequestError

from tests.testing.llava_reference import hf_generate, make_image, png

MAX_TOKENS = 10
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
ONE = "USER: <image>\nDescribe it. ASSISTANT:"
TWO = "USER: <image> then <image>. ASSISTANT:"


@pytest.fixture(scope="module")
def path(tiny_model_dir):
    return tiny_model_dir("llava")


@pytest.fixture(scope="module")
def handle(ray_session, path):
    graph = multimodal(path, encoders=2, encoder_cpus=0.5, num_cpus=1, dtype="float64", block_size=4)
    h = graph.deploy(recovery=False)
    yield h
    h.shutdown()


def _request(prompt: str, images: list) -> dict:
    return {"prompt": prompt, "multi_modal_data": {"image": images}}


def _encoder_stats(handle) -> dict:
    stats = handle.stats()["encode"]
    return {k: sum(s[k] for s in stats) for k in ("images", "encoder_cache_hits", "encoder_cache_misses")}


def test_one_and_two_images_equal_hf(handle, path):
    a, b, c = make_image(21), make_image(22), make_image(23)
    requests = [(ONE, [a]), (TWO, [b, c]), (ONE, [b])]  # same text as the first, other image
    out = handle.generate([_request(p, [png(i) for i in imgs]) for p, imgs in requests], GREEDY)
    for o, (prompt, imgs) in zip(out, requests):
        ref_prompt, ref_tokens = hf_generate(path, prompt, imgs, MAX_TOKENS)
        assert o.prompt_token_ids == ref_prompt
        assert o.outputs[0].token_ids == ref_tokens
    assert out[0].outputs[0].token_ids != out[2].outputs[0].token_ids
    # the engine took every image's features from the encoders
    assert all(s["images_encoded"] == 0 for s in handle.stats()["engine"])


def test_repeated_image_hits_the_encoder_cache(handle, path):
    image = png(make_image(30))
    before = _encoder_stats(handle)
    first = handle.generate(_request(ONE, [image]), GREEDY)[0]
    again = handle.generate([_request(TWO, [image, image]), _request(ONE, [image])], GREEDY)
    after = _encoder_stats(handle)
    assert after["images"] - before["images"] == 4
    assert after["encoder_cache_misses"] - before["encoder_cache_misses"] == 1  # encoded once
    assert after["encoder_cache_hits"] - before["encoder_cache_hits"] == 3
    assert again[1].outputs[0].token_ids == first.outputs[0].token_ids
    assert again[0].outputs[0].token_ids == hf_generate(path, TWO, [make_image(30)] * 2, MAX_TOKENS)[1]


def test_chat_messages_with_an_image(handle, path):
    from transformers import AutoTokenizer

    image = make_image(40)
    messages = [{"role": "user", "content": "<image>\nWhat is this?"}]
    text = AutoTokenizer.from_pretrained(path).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = handle.generate({"messages": messages, "multi_modal_data": {"image": [image]}}, GREEDY)[0]
    assert out.outputs[0].token_ids == hf_generate(path, text, [image], MAX_TOKENS)[1]


def test_bad_image_fails_only_its_request(handle):
    with pytest.raises(RequestError, match="image 0 could not be encoded"):
        handle.generate([_request(ONE, [b"\x89PNG broken"]), _request(ONE, [png(make_image(50))])], GREEDY)
    with pytest.raises(RequestError, match=r"1 image placeholder\(s\) for 2 image\(s\)"):
        handle.generate(_request(ONE, [png(make_image(51)), png(make_image(52))]), GREEDY)
    ok = handle.generate(_request(ONE, [png(make_image(50))]), GREEDY)[0]
    assert ok.finished and len(ok.outputs[0].token_ids) > 0
