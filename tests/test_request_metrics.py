"""Request metrics are on one clock, the wall clock (`time.time()`), on every path: the
in-process engine and a graph (whose stages may run in other processes) report arrival,
first-token and finish times a caller can compare with each other and with its own clock."""

from __future__ import annotations

import time

import pytest

from tideflow import LLM, SamplingParams
from tideflow.graphs import colocated

KEYS = ("arrival_time", "first_token_time", "finished_time")


def _check(outputs, before: float, after: float) -> None:
    for out in outputs:
        times = [out.metrics[k] for k in KEYS]
        assert before <= times[0] <= times[1] <= times[2] <= after, (out.request_id, times, before, after)


@pytest.mark.parametrize("path", ["llm", "graph"])
def test_metrics_are_wall_clock_times_in_order(tiny_model_dir, path):
    model = tiny_model_dir("llama")
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, n=2)
    prompts = ["def f(x):", "import os"]
    if path == "llm":
        llm = LLM(model, dtype="float32")
        before = time.time()
        outputs = llm.generate(prompts, params, use_tqdm=False)
    else:
        graph = colocated(model, dtype="float32")
        before = time.time()
        outputs = graph.run(prompts, params)
    _check(outputs, before, time.time())
