"""The Experts actor class, run in-process: it loads only its experts from the checkpoint and
computes what the engine's own experts compute for them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tideflow.runtime.parallel.experts_actor import Experts, ExpertShard
from tideflow.runtime.parallel.expert_checkpoint import expert_modules, portable_activation
from tideflow.models.expert_mlp import expert_mlp
from tideflow.models.loader import load_model


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_experts_hold_only_their_experts_and_match_the_full_model(kind, tiny_model_dir):
    path = tiny_model_dir(kind)
    model, config = load_model(path, dtype="float64")
    modules = expert_modules(model)
    assert list(modules) == list(range(config.num_hidden_layers))
    act = portable_activation(modules[0][1].act_fn)
    assert type(act) is torch.nn.SiLU  # no transformers class crosses to the actor
    actor = Experts(ExpertShard(path, "float64", {layer: (p, (1, 3)) for layer, (p, _) in modules.items()}, act))
    gen = torch.Generator().manual_seed(0)
    for layer, (_, full) in modules.items():
        held = actor.layers[layer]
        assert held.gate_up_proj.shape[0] == 2 and held.gate_up_proj.dtype == torch.float64
        assert torch.equal(held.down_proj[1], full.down_proj[3])
        x = torch.randn(5, config.hidden_size, dtype=torch.float64, generator=gen)
        out, seconds = actor.forward(layer, x.numpy(), np.array([3, 2]))
        with torch.inference_mode():
            expected = torch.cat([expert_mlp(full, 1, x[:3]), expert_mlp(full, 3, x[3:])])
        assert torch.equal(torch.from_numpy(out), expected) and seconds >= 0
        empty, _ = actor.forward(layer, x[3:].numpy(), np.array([0, 2]))  # an expert with no rows this step
        assert torch.equal(torch.from_numpy(empty), expected[3:])
    stats = actor.stats()
    assert stats["calls"] == 2 * len(modules)
    assert stats["layers"][0] == {"layer": 0, "experts": [1, 3], "tokens": [3, 4]}


def test_a_module_path_the_checkpoint_lacks_is_rejected(tiny_model_dir):
    shard = ExpertShard(tiny_model_dir("mixtral"), "float32", {7: ("model.layers.7.mlp.experts", (0,))}, torch.nn.SiLU())
    with pytest.raises(ValueError, match="expert_actors: the checkpoint holds no expert weights"):
        Experts(shard)
