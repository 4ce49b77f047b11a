"""`tideflow bench graph --graph multimodal`: its seeded requests (images repeat, so the
encoder cache is exercised) and its table. The deployed comparison itself is run by hand:
two graphs cost more than a unit test may."""

from __future__ import annotations

import io

import pytest

from tideflow.bench.multimodal_graph import PROMPT, format_multimodal_table, image_pool, requests, run_multimodal_bench


def test_requests_are_seeded_and_draw_repeated_images_from_the_pool():
    from PIL import Image

    prompts, params = requests(12, 3, seed=5, min_output=4, max_output=9)
    again, _ = requests(12, 3, seed=5, min_output=4, max_output=9)
    images = [p["multi_modal_data"]["image"][0] for p in prompts]
    assert images == [p["multi_modal_data"]["image"][0] for p in again]
    assert set(images) <= set(image_pool(3, 5)) and len(set(images)) < len(images)  # repeats: cache hits
    assert all(p["prompt"] == PROMPT and PROMPT.count("<image>") == 1 for p in prompts)
    assert all(4 <= sp.max_tokens <= 9 and sp.ignore_eos and sp.temperature == 0 for sp in params)
    assert Image.open(io.BytesIO(images[0])).size == (32, 32)


def test_bad_sizes_raise_before_anything_deploys():
    with pytest.raises(ValueError, match="encoders"):
        run_multimodal_bench("unused", encoders=0)


def test_table_shows_encoder_figures_only_for_the_multimodal_graph():
    result = {"systems": {
        "colocated": {"output_tok_s": 100.0, "ratio_vs_colocated": 1.0, "same_tokens_as_colocated": True},
        "multimodal-2": {"output_tok_s": 80.0, "ratio_vs_colocated": 0.8, "same_tokens_as_colocated": True,
                         "images": 32, "encoder_cache_hits": 24, "encode_s": 0.5},
    }}
    lines = format_multimodal_table(result).splitlines()
    assert lines[2].split()[-3:] == ["-", "-", "-"] and lines[3].split()[-3:] == ["32", "24", "0.50"]
    assert lines[3].split()[1:3] == ["80.0", "0.80x"]
