"""The SSE writer takes the collector's deltas as they come (no cumulative output is rebuilt
on the way): its chunks must still add up to exactly the non-streaming response, text,
token counts, logprob offsets and finish reasons included."""

from __future__ import annotations

import pytest

from tests.runtime.dataflow.test_collector import batch, row
from tideflow.runtime.dataflow.collector import OutputCollector
from tideflow.sampling_params import SamplingParams
from tideflow.serve.model_info import ModelInfo
from tideflow.serve.prepare import Prepared
from tideflow.serve.responses import Stream, chat_response, completion_response


@pytest.fixture(scope="module")
def info(tiny_model_dir):
    return ModelInfo.load("llama", tiny_model_dir("llama"))


def _prepared(n: int, top: int | None) -> Prepared:
    return Prepared(prompts=[{"prompt": "p", "prompt_token_ids": [5, 6, 7]}], prompt_texts=["p"],
                    num_prompt_tokens=[3], params=SamplingParams(n=n, max_tokens=8), stream=True,
                    include_usage=True, top_logprobs=top, echo=False, tokens_as_ids=False)


# rows of two completions, grouped as steps of the graph deliver them
GROUPS = [
    [row("r", 0, [10, 11], "ab", logprobs=True), row("r", 0, [12], "c", index=1, logprobs=True)],
    [row("r", 1, [13], "d", logprobs=True)],
    [row("r", 2, [14, 15], "ef", finish="stop", stop="g", logprobs=True),
     row("r", 1, [16], "h", index=1, logprobs=True)],
    [row("r", 2, [], "", index=1, finish="length", logprobs=True)],
]


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_stream_chunks_from_deltas_add_up_to_the_whole_response(info, kind):
    prep = _prepared(n=2, top=1)
    collector = OutputCollector()
    collector.register("r", "p", 2)
    stream = Stream(kind, prep, info)
    chunks = stream.opening()
    for group in GROUPS:
        collector.add(batch(*group))
        chunks += stream.update(0, collector.delta("r"))
    chunks += stream.closing()
    whole = collector.pop("r")
    render = chat_response if kind == "chat" else completion_response
    expected = render(prep, info, [whole])

    for choice in expected["choices"]:
        i = choice["index"]
        parts = [c for chunk in chunks for c in chunk["choices"] if c["index"] == i]
        if kind == "chat":
            text = "".join(c["delta"].get("content", "") for c in parts)
            assert text == choice["message"]["content"]
            streamed = [t for c in parts if c["logprobs"] for t in c["logprobs"]["content"]]
            assert streamed == choice["logprobs"]["content"]
        else:
            assert "".join(c["text"] for c in parts) == choice["text"]
            streamed = {key: [v for c in parts if c["logprobs"] for v in c["logprobs"][key]]
                        for key in ("tokens", "token_logprobs", "text_offset")}
            assert streamed == {key: choice["logprobs"][key] for key in streamed}
        finishes = [c["finish_reason"] for c in parts if c["finish_reason"] is not None]
        assert finishes == [choice["finish_reason"]]
    assert chunks[-1]["usage"] == expected["usage"]
    assert expected["usage"]["completion_tokens"] == 7  # 5 + 2 tokens in the rows
