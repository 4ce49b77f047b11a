"""A disaggregated graph in Python: prefill and decode pools on Ray, queried twice.

    python examples/disaggregated_graph.py [MODEL_DIR]

Without a model directory it writes a tiny random Llama first (no download).
"""

import sys
import tempfile

from tideflow import SamplingParams
from tideflow.graphs import Graph
from tideflow.testing.tiny_models import write_tiny_model

model = sys.argv[1] if len(sys.argv) > 1 else str(write_tiny_model("llama", tempfile.mkdtemp()))

g = Graph("example")
tok = g.stage("tokenize", "tokenizer", num_cpus=0, options={"model": model})
pre = g.stage("prefill", "prefill", num_cpus=0.5, replicas=2, options={"model": model, "dtype": "float32"})
dec = g.stage("decode", "decode", num_cpus=0.5, replicas=2, options={"model": model, "dtype": "float32"})
out = g.stage("detokenize", "detokenizer", num_cpus=0, options={"model": model})
tok >> pre >> dec >> out

handle = g.deploy()
try:
    params = SamplingParams(temperature=0, max_tokens=16)
    for result in handle.generate(["def fibonacci(n):", "The quick brown fox"], params):
        print(f"{result.prompt!r} -> {result.outputs[0].text!r}")
    print(handle.graph.describe())
finally:
    handle.shutdown()
