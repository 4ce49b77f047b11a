"""A snapshot of a multimodal sequence keeps its image features: recomputing its prompt after
a restore needs them (a sequence is restored by its tokens, not its KV)."""

from __future__ import annotations

import msgpack
import torch

from tideflow.runtime.recovery.snapshot_codec import seq_from_state, seq_state
from tideflow.runtime.engine.core.images import ImageInputs
from tideflow.runtime.engine.core.sequence import Sequence
from tideflow.sampling_params import SamplingParams


def test_image_features_survive_a_snapshot():
    seq = Sequence("r", 0, [5, 9, 9, 9, 6, 7], 5, SamplingParams(temperature=0), max_tokens=4)
    features = [torch.arange(6, dtype=torch.float64).reshape(3, 2)]
    seq.images = ImageInputs([b"h" * 16], [(1, 4)], features)
    state = msgpack.unpackb(msgpack.packb(seq_state(seq)))  # as a checkpoint stores it
    back = seq_from_state(state)
    assert back.images.hashes == [b"h" * 16] and back.images.spans == [(1, 4)]
    assert torch.equal(back.images.features[0], features[0])
    plain = Sequence("p", 0, [5, 6], 2, SamplingParams(), max_tokens=4)
    assert seq_from_state(seq_state(plain)).images is None
