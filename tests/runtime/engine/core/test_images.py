"""The torch-free parts of image prompts: placeholder expansion, block hashes that include
image hashes, the encoder's feature cache and the router's image affinity."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tideflow.runtime.dataflow.router import Router
from tideflow.runtime.engine.feature_cache import FeatureCache
from tideflow.runtime.engine.core.block_manager import BlockManager
from tideflow.models.image_spec import ImagePromptSpec
from tideflow.runtime.engine.core.images import ImageInputs, expand_image_tokens, image_hash
from tideflow.runtime.engine.core.sequence import Sequence
from tideflow.sampling_params import SamplingParams

SPEC = ImagePromptSpec(image_token_id=99, tokens_per_image=3)
I = SPEC.image_token_id


def test_placeholders_expand_and_expanded_runs_are_kept():
    ids, spans = expand_image_tokens([5, I, 6, I, I, I, 7], SPEC, 2)
    assert ids == [5, I, I, I, 6, I, I, I, 7]
    assert spans == [(1, 4), (5, 8)]
    assert expand_image_tokens([5, 6], SPEC, 0) == ([5, 6], [])


@pytest.mark.parametrize(
    "ids,num_images,needle",
    [
        ([5, I, 6], 2, r"1 image placeholder\(s\) for 2 image\(s\)"),
        ([5, I, 6, I], 1, r"2 image placeholder\(s\) for 1 image\(s\)"),
        ([5, I, I, 6], 1, "a run of 2 image tokens"),
        ([5, I], 0, "no images were given"),
        ([5, 6], 1, r"0 image placeholder\(s\) for 1 image\(s\)"),
    ],
)
def test_mismatched_placeholders_name_the_field(ids, num_images, needle):
    with pytest.raises(ValueError, match="multi_modal_data: .*" + needle):
        expand_image_tokens(ids, SPEC, num_images)


def test_spec_from_a_llava_style_config():
    from types import SimpleNamespace

    vision = SimpleNamespace(image_size=336, patch_size=14)
    config = SimpleNamespace(vision_config=vision, image_token_id=32000, vision_feature_select_strategy="default")
    assert ImagePromptSpec.from_config(config) == ImagePromptSpec(32000, 576)
    config.vision_feature_select_strategy = "full"
    assert ImagePromptSpec.from_config(config).tokens_per_image == 577
    assert ImagePromptSpec.from_config(SimpleNamespace(vocab_size=10)) is None


def _seq(ids, images=None) -> Sequence:
    seq = Sequence("r", 0, list(ids), len(ids), SamplingParams(), max_tokens=4)
    seq.images = images
    return seq


def test_block_hashes_include_the_images_they_hold():
    ids, spans = expand_image_tokens([5, 6, 7, 8, 9, I, 10, 11, 12, 13, 14], SPEC, 1)  # image at [5, 8)
    a = _seq(ids, ImageInputs([image_hash(b"a")], spans))
    b = _seq(ids, ImageInputs([image_hash(b"b")], spans))
    blocks = BlockManager(num_blocks=16, block_size=4)
    for seq in (a, b):
        blocks._hash_full_blocks(seq, 3)
    assert a.block_hashes[0] == b.block_hashes[0]  # tokens 0-3: before the image
    assert a.block_hashes[1] != b.block_hashes[1]  # tokens 4-7 hold the image
    assert a.block_hashes[2] != b.block_hashes[2]  # after it: chained from a different parent
    text = _seq(ids)
    blocks._hash_full_blocks(text, 3)
    assert text.block_hashes[0] == a.block_hashes[0] and text.block_hashes[1] != a.block_hashes[1]


def test_prefix_cache_never_serves_another_images_blocks():
    ids, spans = expand_image_tokens([5, 6, 7, 8, I, 10, 11, 12, 13, 14], SPEC, 1)
    blocks = BlockManager(num_blocks=16, block_size=4)
    first = _seq(ids, ImageInputs([image_hash(b"a")], spans))
    assert blocks.allocate(first, len(ids))
    first.num_computed_tokens = len(ids)
    blocks.publish_full_blocks(first)
    other = _seq(ids, ImageInputs([image_hash(b"b")], spans))
    assert len(blocks.match_prefix(other)) == 1  # only the text block before the image
    same = _seq(ids, ImageInputs([image_hash(b"a")], spans))
    assert len(blocks.match_prefix(same)) == 2  # all it may take: the last token is computed anyway


def test_image_hash_is_by_content():
    from PIL import Image

    assert image_hash(b"x") == image_hash(bytearray(b"x")) != image_hash(b"y")
    red, blue = Image.new("RGB", (2, 2), (255, 0, 0)), Image.new("RGB", (2, 2), (0, 0, 255))
    assert image_hash(red) == image_hash(Image.new("RGB", (2, 2), (255, 0, 0))) != image_hash(blue)
    with pytest.raises(ValueError, match="multi_modal_data: an image must be"):
        image_hash("a path")


def test_feature_cache_is_an_lru_with_hit_counts():
    cache = FeatureCache(capacity=2)
    found, missing = cache.lookup([b"a", b"b", b"a"])
    assert (found, missing) == ({}, [b"a", b"b"])
    assert (cache.stats.hits, cache.stats.misses) == (1, 2)  # the repeat is served by the one encode
    cache.put(b"a", 1)
    cache.put(b"b", 2)
    assert cache.get(b"a") == 1  # a is now the most recent
    cache.put(b"c", 3)  # evicts b
    assert cache.get(b"b") is None and cache.get(b"c") == 3
    assert (len(cache), cache.stats.evictions) == (2, 1)


def test_router_sends_an_image_to_the_same_replica():
    router = Router(4, "image")
    rows = [{"request_id": f"r{i}", "images": [b"cat" if i % 2 else f"img{i}".encode()]} for i in range(40)]
    picks = [router.pick(row) for row in rows]
    assert len({p for p, row in zip(picks, rows) if row["images"] == [b"cat"]}) == 1
    assert len(set(picks)) > 1  # distinct images spread out
    batch = pa.RecordBatch.from_pylist([{"request_id": "x", "images": None}])
    assert list(router.split(batch)) == [router.pick({"request_id": "x", "images": None})]
