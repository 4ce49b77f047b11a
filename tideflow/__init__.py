"""tideflow: a reactive dataflow runtime for serving and batch-running LLMs on Ray.

The public API is re-exported here; heavy modules (torch, transformers, ray) load lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tideflow.outputs import CompletionOutput, Logprob, RequestOutput
from tideflow.sampling_params import SamplingParams, StructuredOutputsParams

if TYPE_CHECKING:
    from tideflow.llm import LLM

__all__ = ["LLM", "SamplingParams", "StructuredOutputsParams", "RequestOutput", "CompletionOutput", "Logprob"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "LLM":
        from tideflow.llm import LLM

        return LLM
    raise AttributeError(f"module 'tideflow' has no attribute {name!r}")
