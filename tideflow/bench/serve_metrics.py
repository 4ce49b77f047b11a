"""Serving metrics from per-request records, as docs/benchmarks.md ("Serving metrics") defines them
(the definitions of `vllm bench serve`, so numbers compare across the two):

- TTFT = first token chunk - send; E2EL = last token chunk - send;
- ITL = gaps between consecutive token chunks, pooled over all requests;
- TPOT = (E2EL - TTFT) / (output tokens - 1), only for requests with more than one token;
- throughputs over the benchmark's duration, counting completed requests only;
- goodput = completed requests per second that meet every SLO given. A request with one
  output token has no TPOT, so a TPOT SLO cannot fail it.

Failed requests are counted (with the first error) and take no part in any latency.
Pure functions: tests build records by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tideflow.bench.serve_record import RequestRecord

SLO_NAMES = ("ttft", "tpot", "e2el")  # what --goodput may bound
LATENCY_NAMES = ("ttft", "tpot", "itl", "e2el")  # what is summarized
STATS = (("mean", None), ("median", 50), ("p90", 90), ("p99", 99))  # stat name -> percentile (None: the mean)


@dataclass(frozen=True, slots=True)
class Latencies:
    """One completed request's latencies, in seconds."""

    ttft: float
    e2el: float
    tpot: float | None  # None with a single output token
    itl: list[float]  # gaps between its consecutive token chunks


def parse_goodput(items: Iterable[str]) -> dict[str, float]:
    """`["ttft:500", "tpot:50"]` -> `{"ttft": 500.0, "tpot": 50.0}` (milliseconds). Raises
    ValueError naming the bad item, so a typo never silently drops an SLO."""
    slos: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition(":")
        name = name.strip().lower()
        try:
            ms = float(value) if sep else float("nan")
        except ValueError:
            ms = float("nan")
        if name not in SLO_NAMES or not (ms > 0 and np.isfinite(ms)):
            raise ValueError(
                f"--goodput: expected NAME:MS with NAME one of {', '.join(SLO_NAMES)} and MS a positive "
                f"number of milliseconds, got {item!r}"
            )
        if name in slos:
            raise ValueError(f"--goodput: {name} is given twice")
        slos[name] = ms
    return slos


def latencies(record: RequestRecord) -> Latencies:
    """The latencies of a completed request (one with at least one token chunk)."""
    times = record.chunk_times
    ttft = times[0] - record.send_time
    e2el = times[-1] - record.send_time
    tpot = (e2el - ttft) / (record.output_tokens - 1) if record.output_tokens > 1 else None
    return Latencies(ttft, e2el, tpot, [b - a for a, b in zip(times, times[1:])])


def meets_slos(lat: Latencies, slos_ms: dict[str, float]) -> bool:
    """Whether a request meets every SLO (milliseconds); an undefined TPOT meets its SLO."""
    values = {"ttft": lat.ttft, "tpot": lat.tpot, "e2el": lat.e2el}
    return all(values[name] is None or 1e3 * values[name] <= bound for name, bound in slos_ms.items())


def summarize(values_s: Sequence[float]) -> dict[str, float | None]:
    """Mean, median, p90 and p99 in milliseconds (numpy's linear interpolation between
    order statistics); None for each when there are no values."""
    if not len(values_s):
        return {stat: None for stat, _ in STATS}
    ms = 1e3 * np.asarray(values_s, dtype=np.float64)
    return {stat: float(ms.mean() if q is None else np.percentile(ms, q)) for stat, q in STATS}


def compute_metrics(records: Sequence[RequestRecord], duration_s: float, slos_ms: dict[str, float] | None = None) -> dict:
    """The benchmark's metrics as a flat JSON-able dict: counts, throughputs, goodput (None
    without SLOs) and `{stat}_{metric}_ms` for stat in mean/median/p90/p99."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    done = [r for r in records if r.ok]
    lats = [latencies(r) for r in done]
    input_tokens = sum(r.prompt_len for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    series = {
        "ttft": [x.ttft for x in lats],
        "tpot": [x.tpot for x in lats if x.tpot is not None],
        "itl": [gap for x in lats for gap in x.itl],
        "e2el": [x.e2el for x in lats],
    }
    metrics: dict = {
        "completed": len(done),
        "failed": len(records) - len(done),
        "first_error": next((r.error for r in records if not r.ok), None),
        "duration_s": duration_s,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(done) / duration_s,
        "output_throughput": output_tokens / duration_s,
        "total_token_throughput": (input_tokens + output_tokens) / duration_s,
        "goodput": sum(meets_slos(x, slos_ms) for x in lats) / duration_s if slos_ms else None,
    }
    for name in LATENCY_NAMES:
        for stat, value in summarize(series[name]).items():
            metrics[f"{stat}_{name}_ms"] = value
    return metrics
