"""oneDNN-prepacked projections: the same numbers as `F.linear` at every row count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tideflow.models.prepacked_linear import MIN_PACKED_ROWS, PrepackedLinear, prepacking_available

pytestmark = pytest.mark.skipif(not prepacking_available(), reason="this torch has no oneDNN")


@pytest.mark.parametrize("rows", [1, 2, MIN_PACKED_ROWS, 17, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_f_linear(rows, bias):
    gen = torch.Generator().manual_seed(rows)
    linear = torch.nn.Linear(96, 160, bias=bias)
    x = torch.randn(rows, 96, generator=gen)
    packed = PrepackedLinear.of(linear)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), F.linear(x, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
        # a strided input (a column slice of a wider tensor) is taken as well
        wide = torch.randn(rows, 200, generator=gen)
        torch.testing.assert_close(packed(wide[:, :96]), F.linear(wide[:, :96], linear.weight, linear.bias),
                                   rtol=1e-5, atol=1e-5)


def test_only_plain_float32_cpu_linears_are_prepacked():
    assert PrepackedLinear.of(torch.nn.Identity()) is None
    with pytest.raises(ValueError, match="2-D float32 CPU weight"):
        PrepackedLinear(torch.zeros(4, 4, dtype=torch.float64))
