"""`RequestRecord`: what the serving benchmark saw of one request, and all the metrics need.

The HTTP client (`serve_client`) and the in-process run (`serve_inprocess`) both fill these,
so the two are measured by the same functions (`serve_metrics`). Times are
`time.perf_counter()` seconds: only differences between them mean anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    prompt_len: int  # prompt tokens: the server's usage count when it sent one, else the trace's
    max_tokens: int  # output tokens asked for (all of them arrive: EOS is ignored)
    send_time: float = 0.0  # when the request went out
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk that carried tokens, in order
    output_tokens: int = 0  # the server's usage count, else the number of token chunks
    error: str | None = None  # why the request failed; None when it completed

    @property
    def ok(self) -> bool:
        return self.error is None
