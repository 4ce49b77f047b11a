"""The experts of a MoE model: found in its module tree, and read from its checkpoint by expert.

An expert actor holds a few experts of every MoE layer, so it must not load the whole model.
The engine, which has the model, finds its experts modules (`expert_modules`: those
transformers' `use_experts_implementation` decorates), checks that their layout is one an
actor can run (`check_supported`) and tells each actor the modules' paths; the actor reads
the weights of its own experts only, straight from the safetensors files (`ExpertReader`),
and never imports transformers.

Checkpoints store experts in one of two layouts, both handled:
- fused, as transformers holds them: `{module}.gate_up_proj` [E, 2I, H] and
  `{module}.down_proj` [E, H, I]; only the owned rows are read (`get_slice`);
- per expert, as most hub checkpoints (and `save_pretrained`'s original format) do:
  `{module}.{e}.{gate}.weight` / `{up}` / `{down}` with the names of `PER_EXPERT_NAMES`
  (Mixtral's `w1 / w3 / w2` under `block_sparse_moe`, Qwen-MoE's `gate_proj / up_proj /
  down_proj`); gate and up are concatenated as transformers' converter does.
"""

from __future__ import annotations

import json
import os
import re

import torch

# (gate, up, down) weight names of one expert in per-expert checkpoints
PER_EXPERT_NAMES = (("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj"))
# module path spellings transformers renames on load: (name in the model, name in the checkpoint)
PATH_ALIASES = ((".mlp.experts", ".block_sparse_moe.experts"),)
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def is_experts_module(module) -> bool:
    """A module whose forward transformers dispatches through `ExpertsInterface`."""
    return hasattr(module, "_is_expert_parallel") and hasattr(module, "num_experts")


def expert_modules(model) -> dict[int, tuple[str, torch.nn.Module]]:
    """model layer index -> (module path, experts module), ascending by layer."""
    found = {}
    for name, module in model.named_modules():
        if is_experts_module(module):
            match = _LAYER.search(f".{name}.")
            if match is None:
                raise ValueError(f"experts module {name!r} is not under a numbered decoder layer")
            found[int(match.group(1))] = (name, module)
    return dict(sorted(found.items()))


def check_supported(path: str, module) -> None:
    """Raises ValueError for experts an actor cannot run exactly as the module would: only
    gated, concatenated, bias-free, untransposed experts with transformers' default gate."""
    from transformers.integrations.moe import _default_apply_gate

    plain = (
        getattr(module, "has_gate", False) and getattr(module, "is_concatenated", True)
        and not getattr(module, "has_bias", False) and not getattr(module, "is_transposed", False)
        and not getattr(module, "has_post_expert_norm", False) and type(module)._apply_gate is _default_apply_gate
    )
    if not plain:
        raise ValueError(f"expert_actors: experts module {path!r} ({type(module).__name__}) has a layout expert actors "
                         "do not run (only gated, bias-free, untransposed gate_up_proj / down_proj experts)")


# transformers activation classes -> a torch module computing the same, so that an actor
# unpickles it without importing transformers
_TORCH_ACTIVATIONS = {"SiLUActivation": "SiLU"}


def portable_activation(act_fn):
    """`act_fn` as something an expert actor can unpickle cheaply (a torch module when one is
    known to compute the same; else `act_fn` itself)."""
    name = _TORCH_ACTIVATIONS.get(type(act_fn).__name__)
    return getattr(torch.nn, name)() if name else act_fn


class ExpertReader:
    """Reads chosen experts of one experts module from a local safetensors checkpoint."""

    def __init__(self, model_dir: str):
        if not os.path.isdir(model_dir):
            raise ValueError(f"expert_actors: expert actors read a local model directory, {model_dir!r} is not one")
        index = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                files = json.load(f)["weight_map"]
            self.files = {k: os.path.join(model_dir, v) for k, v in files.items()}  # tensor key -> file
        else:
            single = os.path.join(model_dir, "model.safetensors")
            if not os.path.isfile(single):
                raise ValueError(f"expert_actors: {model_dir!r} has no safetensors checkpoint")
            from safetensors import safe_open

            with safe_open(single, framework="pt") as f:
                self.files = {k: single for k in f.keys()}

    def read(self, path: str, experts: list[int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate_up_proj [n, 2I, H], down_proj [n, H, I]) of `experts` (in that order) of the
        experts module at `path`, in `dtype`. Raises ValueError when the checkpoint has neither layout."""
        for prefix in self._prefixes(path):
            if f"{prefix}.gate_up_proj" in self.files:
                return self._rows(f"{prefix}.gate_up_proj", experts, dtype), self._rows(f"{prefix}.down_proj", experts, dtype)
            for gate, up, down in PER_EXPERT_NAMES:
                if f"{prefix}.{experts[0]}.{gate}.weight" in self.files:
                    gate_up = [torch.cat([self._get(f"{prefix}.{e}.{gate}.weight"), self._get(f"{prefix}.{e}.{up}.weight")])
                               for e in experts]
                    downs = [self._get(f"{prefix}.{e}.{down}.weight") for e in experts]
                    return torch.stack(gate_up).to(dtype), torch.stack(downs).to(dtype)
        raise ValueError(f"expert_actors: the checkpoint holds no expert weights for {path!r} in a layout tideflow reads")

    @staticmethod
    def _prefixes(path: str) -> list[str]:
        out = [path]
        for ours, theirs in PATH_ALIASES:
            if ours in path:
                out.append(path.replace(ours, theirs))
        return out

    def _get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.files[key], framework="pt") as f:
            return f.get_tensor(key)

    def _rows(self, key: str, experts: list[int], dtype: torch.dtype) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.files[key], framework="pt") as f:
            part = f.get_slice(key)
            return torch.stack([part[e : e + 1][0] for e in experts]).to(dtype)
