"""What a request returns, shaped like vLLM's `RequestOutput` / `CompletionOutput`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Logprob:
    """The log-probability of one token at one position."""

    logprob: float  # natural log of the token's probability under the raw model distribution
    rank: int  # 1 = the most likely token
    decoded_token: str | None = None  # the token's text, when a tokenizer is at hand


# position in the completion -> {token_id -> Logprob}; the sampled token is always included
SampleLogprobs = list[dict[int, Logprob]]
# prompt position -> {token_id -> Logprob} (the prompt's own token and the top-k); None at position 0
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass(slots=True)
class CompletionOutput:
    """One completion of a request (a request with n=2 has two)."""

    index: int  # 0..n-1
    text: str  # detokenized output, cut at a stop string
    token_ids: list[int]  # generated token ids
    cumulative_logprob: float | None  # sum of the sampled tokens' logprobs, when logprobs were asked for
    logprobs: SampleLogprobs | None  # per position, when logprobs were asked for
    finish_reason: str | None  # None while running, then "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


def best_completions(out: "RequestOutput", n: int, logprobs: bool) -> "RequestOutput":
    """`out` (of params run by `SamplingParams.sampled_params`) cut to its `n` completions with
    the highest cumulative logprob, numbered 0..n-1 in that order; their logprobs are dropped
    unless `logprobs` (the request asked for them)."""
    ranked = sorted(out.outputs, key=lambda c: -(c.cumulative_logprob or 0.0))[:n]
    best = []
    for i, c in enumerate(ranked):
        best.append(CompletionOutput(i, c.text, c.token_ids, c.cumulative_logprob if logprobs else None,
                                     c.logprobs if logprobs else None, c.finish_reason, c.stop_reason))
    return RequestOutput(out.request_id, out.prompt, out.prompt_token_ids, best, out.finished, out.metrics,
                         out.prompt_logprobs, out.embedding)


@dataclass(slots=True)
class RequestOutput:
    """The state of one request: complete when `finished`, growing while it streams."""

    request_id: str
    prompt: str | None  # the prompt text, when the request came as text
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    # arrival_time / first_token_time / finished_time, wall-clock seconds (time.time()) on every path:
    # the in-process engine and a graph's stages in other processes read the same clock
    metrics: dict[str, float] = field(default_factory=dict)
    prompt_logprobs: PromptLogprobs | None = None  # when SamplingParams.prompt_logprobs was set
    embedding: list[float] | None = None  # the prompt's pooled, L2-normalized hidden state (SamplingParams.pooling)
