"""The batch actor's work without Ray: prompts from text, token id and messages columns give
the same greedy tokens as `LLM.generate` / `LLM.chat`; bad rows get an `error` and the rest of
their batch still runs; bad arguments are ValueErrors naming the argument."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tideflow import SamplingParams
from tideflow.batch import OUTPUT_NAMES, run
from tideflow.batch.generator import BatchGenerator, GeneratorSpec
from tideflow.batch.run import generator_spec

from .conftest import ENGINE_OPTIONS

GREEDY = SamplingParams(temperature=0, max_tokens=6)


@pytest.fixture(scope="module")
def reference(reference_llm):
    return reference_llm


@pytest.fixture(scope="module")
def backend(model):
    """One engine for every generator of this module (each actor of a pool builds its own)."""
    from tideflow.batch.backends import EngineBackend

    return EngineBackend(model, ENGINE_OPTIONS)


@pytest.fixture
def make(model, backend):
    def build(params: SamplingParams = GREEDY, **columns) -> BatchGenerator:
        return BatchGenerator(GeneratorSpec(model, params, **columns), backend)

    return build


def test_text_prompts_match_llm_generate_and_bad_rows_get_errors(make, reference):
    good = ["def add(a, b):", "The quick brown fox", "import os"]
    too_long = "word " * 2000  # over the tiny model's 1024-token context
    batch = pa.table({"prompt": [good[0], "", None, good[1], too_long, good[2]], "keep": list(range(6))})
    out = make(prompt_column="prompt")(batch)
    assert out.column_names == ["prompt", "keep", *OUTPUT_NAMES]
    assert out.column("keep").to_pylist() == list(range(6))  # input columns kept, rows in order
    rows = out.to_pylist()
    errors = [r["error"] for r in rows]
    assert errors[0] is None and errors[3] is None and errors[5] is None
    assert errors[1] == "prompt: the prompt is empty"
    assert errors[2] == "prompt: the prompt is missing (null)"
    assert "context length is 1024" in errors[4]
    for i in (1, 2, 4):
        assert rows[i]["generated_text"] is None and rows[i]["finish_reason"] is None
    expected = reference.generate(good, GREEDY, use_tqdm=False)
    for i, ref in zip((0, 3, 5), expected):
        assert rows[i]["generated_token_ids"] == ref.outputs[0].token_ids
        assert rows[i]["generated_text"] == ref.outputs[0].text
        assert rows[i]["num_prompt_tokens"] == len(ref.prompt_token_ids)
        assert rows[i]["num_generated_tokens"] == len(ref.outputs[0].token_ids)
        assert rows[i]["finish_reason"] == ref.outputs[0].finish_reason


def test_token_id_and_non_string_columns(make, reference):
    ids = [[10, 20, 30, 40], [5, 6], None, [7, None], [], [100_000]]
    out = make(prompt_column="ids")(pa.table({"ids": pa.array(ids, pa.list_(pa.int64()))})).to_pylist()
    expected = reference.generate([{"prompt_token_ids": p} for p in ids[:2]], GREEDY, use_tqdm=False)
    assert [r["generated_token_ids"] for r in out[:2]] == [e.outputs[0].token_ids for e in expected]
    assert [r["error"] for r in out[2:]] == [
        "ids: the prompt is missing (null)", "ids: the token ids hold a null", "prompt_token_ids: the prompt is empty",
        "prompt_token_ids: token id 100000 is outside the vocabulary [0, 512)",
    ]
    per_row = pa.table({"ids": pa.array(ids[:2] * 2, pa.list_(pa.int32())), "budget": [2, None, 0, 3]})
    out = make(prompt_column="ids", max_tokens_column="budget")(per_row).to_pylist()
    assert [r["generated_token_ids"] for r in out[:2]] == [expected[0].outputs[0].token_ids[:2], expected[1].outputs[0].token_ids]
    assert out[2]["error"] == "budget: must be a positive integer, got 0"
    assert out[3]["generated_token_ids"] == expected[1].outputs[0].token_ids[:3]
    numbers = make(prompt_column="n")(pa.table({"n": [1, 2]}))
    assert numbers.column("error").to_pylist() == ["n: expected text or a list of token ids, got int64"] * 2


def test_messages_column_matches_llm_chat(make, reference):
    chats = [[{"role": "user", "content": "Write a function"}],
             [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"}]]
    struct_column = pa.array(chats + [[], None, [{"role": "user"}]])
    out = make(messages_column="messages")(pa.table({"messages": struct_column})).to_pylist()
    expected = [reference.chat(c, GREEDY, use_tqdm=False)[0] for c in chats]
    assert [r["generated_token_ids"] for r in out[:2]] == [e.outputs[0].token_ids for e in expected]
    assert [r["num_prompt_tokens"] for r in out[:2]] == [len(e.prompt_token_ids) for e in expected]
    assert [r["error"] for r in out[2:]] == [
        "messages: expected a non-empty list of messages", "messages: the conversation is missing (null)",
        "messages: message 0 has no string 'content'",
    ]
    as_json = pa.table({"messages": [json.dumps(chats[0]), "{not json"]})  # e.g. from a csv file
    out = make(messages_column="messages")(as_json).to_pylist()
    assert out[0]["generated_token_ids"] == expected[0].outputs[0].token_ids
    assert out[1]["error"] == "messages: not a JSON list of messages"


def test_seeded_sampling_depends_on_the_row_not_the_batch(make):
    gen = make(SamplingParams(temperature=1.0, seed=3, max_tokens=6), prompt_column="prompt")
    rows = pa.table({"prompt": ["alpha", "beta", "gamma"], "row_id": ["f:0", "f:1", "f:2"]})
    whole = gen(rows).column("generated_token_ids").to_pylist()
    alone = [gen(rows.slice(i, 1)).column("generated_token_ids").to_pylist()[0] for i in (2, 0)]
    assert alone == [whole[2], whole[0]]
    assert len({tuple(t) for t in whole}) == 3


def test_bad_arguments_name_the_argument(model, make):
    with pytest.raises(ValueError, match="prompt_column and messages_column"):
        generator_spec(model, prompt_column="a", messages_column="b")
    with pytest.raises(ValueError, match="sampling_params.n must be 1"):
        generator_spec(model, sampling_params=SamplingParams(n=2))
    with pytest.raises(ValueError, match="model_or_graph: expected a model directory"):
        generator_spec(3)
    with pytest.raises(ValueError, match="prompt_column must be a non-empty"):
        generator_spec(model, prompt_column="")
    with pytest.raises(ValueError, match="concurrency must be"):
        run(None, model, concurrency=(2, 1))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        run(None, model, batch_size=0)
    gen = make(prompt_column="prompt")
    with pytest.raises(ValueError, match=r"input: columns \['error'\] would be overwritten"):
        gen(pa.table({"prompt": ["a"], "error": ["x"]}))
    with pytest.raises(ValueError, match="prompt_column: the input has no column 'prompt'"):
        gen(pa.table({"text": ["a"]}))


def test_concurrent_batches_share_one_engine(make, reference):
    """What an actor does with batches_per_actor > 1: several calls at once, one engine loop."""
    from concurrent.futures import ThreadPoolExecutor

    gen = make(prompt_column="prompt")
    batches = [pa.table({"prompt": [f"{k}.{i} river stone fox" for i in range(5)] + [""]}) for k in range(3)]
    with ThreadPoolExecutor(3) as pool:
        outputs = list(pool.map(gen, batches))
    for batch, out in zip(batches, outputs):
        expected = reference.generate(batch.column("prompt").to_pylist()[:5], GREEDY, use_tqdm=False)
        assert out.column("generated_token_ids").to_pylist()[:5] == [e.outputs[0].token_ids for e in expected]
        assert out.column("error").to_pylist()[5] == "prompt: the prompt is empty"


def test_structured_outputs_for_the_job_and_per_row(make, model):
    """A job-wide constraint, overridden per row by a column of JSON text or of structs; a
    row whose constraint is not JSON, unknown or does not compile gets an error, the rest run."""
    import re

    from tideflow.batch.backends import GraphBackend

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    job = SamplingParams(temperature=1.0, seed=3, max_tokens=40, structured_outputs={"regex": "[a-z]{3}"})
    shapes = [None, json.dumps({"json": schema}), '{"choice": ["x", "y"]}', "{not json", '{"regex": "a(b"}',
              '{"xml": "<a/>"}']
    rows = pa.table({"prompt": ["alpha", "beta", "gamma", "delta", "eps", "zeta"], "shape": shapes})
    out = make(job, prompt_column="prompt", structured_outputs_column="shape")(rows).to_pylist()
    assert re.fullmatch("[a-z]{3}", out[0]["generated_text"]) and out[0]["finish_reason"] == "stop"
    assert 1 <= json.loads(out[1]["generated_text"])["n"] <= 9
    assert out[2]["generated_text"] in ("x", "y")
    assert out[3]["error"] == "shape: not JSON: '{not json'"
    assert out[4]["error"].startswith("structured_outputs.regex:") and out[4]["generated_text"] is None
    assert out[5]["error"].startswith("shape: structured_outputs: unknown key(s) ['xml']")
    structs = pa.table({"prompt": ["alpha"], "shape": pa.array([{"regex": "[0-9]{4}", "choice": None}])})
    (row,) = make(job, prompt_column="prompt", structured_outputs_column="shape")(structs).to_pylist()
    assert re.fullmatch("[0-9]{4}", row["generated_text"])
    # the graph path checks grammars before sending rows; a bad job-wide one is refused up front
    bad = SamplingParams(structured_outputs={"grammar": "start: foo"})
    assert GraphBackend(None, model, {}).check([5, 6], bad).startswith("structured_outputs.grammar:")
    with pytest.raises(ValueError, match="sampling_params: structured_outputs.grammar"):
        generator_spec(model, sampling_params=bad)
    with pytest.raises(ValueError, match="structured_outputs_column must be a non-empty"):
        generator_spec(model, structured_outputs_column="")
