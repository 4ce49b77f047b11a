"""Multi-node placement on one machine: a three-node `ray.cluster_utils.Cluster` in a
subprocess, the disaggregated graph with prefill and decode pinned to different nodes by
custom resources. Output must equal the in-process engine's, token for token."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from tests.graphs.parity import mixed_requests, reference_tokens

ROOT = pathlib.Path(__file__).resolve().parents[2]
COUNT = 6


def test_disaggregated_graph_across_nodes(tiny_model_dir):
    model = tiny_model_dir("llama")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "tests.cluster.multinode", model, str(COUNT)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert set(result["nodes"]["prefill"]) == {result["prefill_node"]}
    assert set(result["nodes"]["decode"]) == {result["decode_node"]}
    assert result["prefill_node"] != result["decode_node"]

    vocab = json.loads(pathlib.Path(model, "config.json").read_text())["vocab_size"]
    prompts, params = mixed_requests(vocab, count=COUNT, seed=3)
    assert result["tokens"] == reference_tokens(model, prompts, params)
