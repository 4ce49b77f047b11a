"""Building an engine, tensor-parallel when its config says so.

The engine (tideflow.runtime.engine) runs one model in one process; this package adds the
ranks of a tensor-parallel engine on top of it. `create_engine` is what callers that may ask
for `tensor_parallel_size > 1` (the `LLM`, the engine-owning stage roles) build engines with:
it hands the engine the sharded runner, so the engine never imports the layer above it.
"""

from __future__ import annotations

from tideflow.config import EngineConfig
from tideflow.runtime.engine.engine import Engine
from tideflow.runtime.parallel.sharded_runner import start_sharded_runner


def create_engine(config: EngineConfig, *, detokenize: bool = True) -> Engine:
    """An engine over `config`; with tensor_parallel_size > 1, rank 0 here and the other
    ranks in `ShardWorker` actors."""
    return Engine(config, detokenize=detokenize, sharded_runner=start_sharded_runner)
