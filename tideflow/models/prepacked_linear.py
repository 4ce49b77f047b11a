"""Linear layers with their weights prepacked for oneDNN, for the float32 CPU decoder.

torch's `F.linear` on CPU goes to MKL's sgemm, which reorders the weight into its blocked
layout on every call. That is cheap against a big matmul and costly against a decode step's
few rows: measured on SmolLM2-135M's 30 layers (2 AVX2 cores, float32), all projections of one
step take 65 ms at 4 rows through `F.linear` and 47 ms through oneDNN with the weight reordered
once at load (`torch.ops.mkldnn._reorder_linear_weight`), 97 against 83 ms at 32 rows, and
about the same from 512 rows on. At one or two rows MKL's matrix-vector path is faster (32
against 40 ms), so `PrepackedLinear` keeps both: the original weight for steps of fewer than
`MIN_PACKED_ROWS` rows, the packed one for the rest. vLLM's CPU backend prepacks the same way
(its `onednn_mm`). The cost is a second copy of each packed weight in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_PACKED_ROWS = 3  # below this MKL's matrix-vector path beats the packed oneDNN matmul
PACKED_FOR_ROWS = 32  # the batch-size hint oneDNN picks its blocked layout for


def prepacking_available() -> bool:
    """Whether this torch build has oneDNN's prepacked linear (x86-64 builds do)."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class PrepackedLinear:
    """`F.linear(x, weight, bias)` for 2-D float32 CPU inputs, through a oneDNN-prepacked
    weight when `x` has at least `MIN_PACKED_ROWS` rows."""

    __slots__ = ("weight", "bias", "packed")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(f"PrepackedLinear takes a 2-D float32 CPU weight, got {tuple(weight.shape)} {weight.dtype} "
                             f"on {weight.device}")
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.contiguous(), PACKED_FOR_ROWS)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[0] < MIN_PACKED_ROWS:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [None], "")

    @classmethod
    def of(cls, module) -> "PrepackedLinear | None":
        """A prepacked copy of a plain `nn.Linear` (None for anything else: a sharded or
        quantized projection keeps its own forward)."""
        if type(module) is not torch.nn.Linear:
            return None
        return cls(module.weight, module.bias)
