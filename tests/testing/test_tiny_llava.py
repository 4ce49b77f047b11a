"""The tiny LLaVA checkpoint: transformers loads it offline through its normal path, its
processor expands `<image>` as the engine does, and tideflow's loader and image encoder
read it (the tideflow attention function on the language model only)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from tideflow.testing.tiny_models import KINDS, MULTIMODAL_KINDS, write_tiny_model

from .llava_reference import make_image


@pytest.fixture(scope="module")
def path(tiny_model_dir):
    return tiny_model_dir("llava")


def test_llava_is_listed_apart_from_the_causal_kinds():
    assert "llava" in MULTIMODAL_KINDS and "llava" not in KINDS


def test_transformers_loads_config_model_and_processor(path):
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llava" and config.vision_config.model_type == "clip_vision_model"
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (16, 4)
    model = LlavaForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor).__name__ == "LlavaProcessor"
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == config.image_token_id == config.text_config.vocab_size - 1
    inputs = processor(text="USER: <image>\nhi", images=[make_image(0)], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 16, 16)
    assert inputs["input_ids"][0].tolist().count(image_id) == 16
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    tokenizer_config = json.loads((pathlib.Path(path) / "tokenizer_config.json").read_text())
    assert "chat_template" in tokenizer_config and "<image>" in tokenizer_config["extra_special_tokens"]


def test_same_seed_same_weights(tmp_path, path):
    again = write_tiny_model("llava", tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (pathlib.Path(path) / "model.safetensors").read_bytes()


def test_loader_and_image_encoder(path):
    from tideflow.models.loader import load_model
    from tideflow.models.vision import ImageEncoder
    from tideflow.runtime.engine.attention import register_attention

    attn = register_attention("torch")
    model, config = load_model(path, dtype="float64", attn_implementation=attn)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert config.text_config._attn_implementation == attn
    assert config.vision_config._attn_implementation != attn  # the vision tower keeps transformers' own
    encoder = ImageEncoder.load(path, dtype="float64")
    assert encoder.model.model.language_model is None  # only the vision side is kept
    images = [make_image(1), make_image(2)]
    features = encoder.encode(images)
    assert [tuple(f.shape) for f in features] == [(16, 64), (16, 64)]
    with torch.inference_mode():
        pixels = ImageEncoder.for_model(model, path).image_processor(images=images, return_tensors="pt")["pixel_values"]
        expected = model.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output
    for f, e in zip(features, expected):
        torch.testing.assert_close(f, e, rtol=0, atol=0)
