"""The batch actor over a deployed graph instead of a model directory: it sends its rows
through (a serialized copy of) the graph handle, as each actor of a pool does; greedy tokens
equal `LLM.generate`, and bad rows get an error without failing their batch."""

from __future__ import annotations

import pyarrow as pa

from tideflow import SamplingParams
from tideflow.batch.generator import BatchGenerator
from tideflow.batch.run import generator_spec
from tideflow.graphs.builtin import colocated

from .conftest import ENGINE_OPTIONS

GREEDY = SamplingParams(temperature=0, max_tokens=5)


def test_generator_through_a_deployed_graph_matches_llm_generate(ray_session, model, reference_llm):
    import ray.cloudpickle

    good = [f"{i}: the river and the stone" for i in range(10)]
    prompts = good[:5] + ["", "word " * 1500] + good[5:]
    handle = colocated(model, name="batch-graph", **ENGINE_OPTIONS).deploy()
    try:
        spec = generator_spec(handle, sampling_params=GREEDY)
        assert spec.model == model and spec.graph_handle is handle
        actor_copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(spec))  # what each pool actor receives
        gen = BatchGenerator(actor_copy)
        rows = gen(pa.table({"prompt": prompts})).to_pylist()
        again = gen(pa.table({"prompt": good[:3]})).to_pylist()  # request ids stay unique across calls
    finally:
        handle.shutdown()
    assert [r["prompt"] for r in rows] == prompts
    assert rows[5]["error"] == "prompt: the prompt is empty"
    assert rows[6]["error"].startswith("prompt_token_ids: the prompt has") and rows[6]["generated_text"] is None
    expected = reference_llm.generate(good, GREEDY, use_tqdm=False)
    generated = [r for r in rows if r["error"] is None]
    assert [r["generated_token_ids"] for r in generated] == [e.outputs[0].token_ids for e in expected]
    assert [r["generated_text"] for r in generated] == [e.outputs[0].text for e in expected]
    assert [r["generated_token_ids"] for r in again] == [e.outputs[0].token_ids for e in expected[:3]]
