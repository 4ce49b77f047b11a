"""Shared by the batch tests: the tiny Llama and one reference `LLM` over it."""

from __future__ import annotations

import pytest

# Engine options of the reference and of the batch actors: float32, and room for every row
# of a test batch in one engine batch (fewer steps on a 2-core machine; greedy tokens are
# the same at any batch size).
ENGINE_OPTIONS = {"dtype": "float32", "max_num_seqs": 256}


@pytest.fixture(scope="session")
def model(tiny_model_dir) -> str:
    return tiny_model_dir("llama")


@pytest.fixture(scope="session")
def reference_llm(model):
    from tideflow import LLM

    return LLM(model, **ENGINE_OPTIONS)
