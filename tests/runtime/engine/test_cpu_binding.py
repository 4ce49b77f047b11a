"""cpu_bind: which cores an engine computes on (vLLM's VLLM_CPU_OMP_THREADS_BIND)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tideflow.config import engine_config, parse_cores
from tideflow.engine_args import add_engine_args, engine_options
from tideflow.runtime.engine.cpu_binding import choose_cores


def test_core_lists_parse_as_vllm_writes_them():
    assert parse_cores("0-1,3") == [0, 1, 3]
    assert parse_cores("2") == [2]
    for bad in ("", "a", "1-0", "-1", "0-"):
        with pytest.raises(ValueError, match="cpu_bind: expected 'auto' or cores"):
            parse_cores(bad)


def test_auto_takes_the_idle_cores_and_all_of_them_when_none_is():
    assert choose_cores("auto", [0, 1], busy={0: 0.05, 1: 0.97}) == [0]
    assert choose_cores("auto", [0, 1, 2, 3], busy={0: 0.9, 1: 0.1, 2: 0.2, 3: 1.0}) == [1, 2]
    assert choose_cores("auto", [0, 1], busy={0: 0.9, 1: 0.95}) == [0, 1]
    assert choose_cores("0", [0, 1]) == [0]
    with pytest.raises(ValueError, match=r"cores \[5\] are not available"):
        choose_cores("0,5", [0, 1])


def test_a_bad_cpu_bind_fails_before_anything_loads():
    with pytest.raises(ValueError, match="cpu_bind"):
        engine_config("any-model", cpu_bind="zero")
    import argparse

    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    assert engine_options(parser.parse_args(["--cpu-bind", "0-1"]))["cpu_bind"] == "0-1"
    with pytest.raises(SystemExit):
        parser.parse_args(["--cpu-bind", "x"])


_BOUND = textwrap.dedent(
    """
    import json, os, sys, threading
    import torch
    torch.ones(256, 256) @ torch.ones(256, 256)  # torch's thread pool exists before the engine binds
    from tideflow import LLM, SamplingParams
    llm = LLM(sys.argv[1], dtype="float32", cpu_bind="0")
    out = llm.generate(["hello"], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    threads = {int(t): sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
    print(json.dumps({"main": sorted(os.sched_getaffinity(0)), "threads": sorted({tuple(v) for v in threads.values()}),
                      "torch_threads": torch.get_num_threads(), "tokens": len(out[0].outputs[0].token_ids)}))
    """
)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_the_engine_process_computes_on_the_cores_named(tiny_model_dir):
    out = subprocess.run([sys.executable, "-c", _BOUND, tiny_model_dir("llama")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["main"] == [0] and result["threads"] == [[0]]  # every thread, the pools made earlier included
    assert result["torch_threads"] == 1 and result["tokens"] == 3
