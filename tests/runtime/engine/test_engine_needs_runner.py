"""The engine does not import the layer above it: a tensor-parallel config needs the sharded
runner handed in (tideflow.runtime.parallel.create_engine does), and says so before it
loads anything."""

from __future__ import annotations

import pytest

from tideflow.config import engine_config
from tideflow.runtime.engine.engine import Engine


def test_tensor_parallel_engine_without_its_runner_is_a_clear_error():
    config = engine_config("/nonexistent/model", tensor_parallel_size=2)
    with pytest.raises(ValueError, match="tensor_parallel_size > 1 needs the sharded runner.*create_engine"):
        Engine(config)
