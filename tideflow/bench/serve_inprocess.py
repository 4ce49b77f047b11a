"""The serving benchmark's requests through the in-process engine, to split served latency into
engine time and serving overhead.

The same prompts, output lengths, arrival offsets and concurrency cap go to a `tideflow`
`Engine` in this process, with `detokenize=False` as in the graph's engine stage (text is the
detokenizer stage's job, so it counts as serving overhead). Every step is timed, and every
token a step produces is stamped at the step's end, into the same `RequestRecord`s the HTTP
client fills, so the same functions compute the same metrics for both. A step is a decode step
when every row computes one token (no prefill in it).

What "mean ITL over HTTP - mean in-process decode step" measures is everything between the
engine and the client per token: Ray graph hops, detokenizing, Serve, HTTP and SSE, the
client's parsing. On a small machine client and server also share the CPU.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from tideflow.bench.serve_record import RequestRecord
from tideflow.bench.workloads import FIRST_ID, TraceRequest


@dataclass(slots=True)
class InprocessRun:
    records: list[RequestRecord]  # request (trace order) -> what the engine produced, when
    duration_s: float  # start to the last token
    step_s: list[float]  # every step's time
    decode_step_s: list[float]  # the times of steps with no prefill rows

    def summary(self) -> dict:
        """Mean step times in milliseconds (None when there was no such step)."""
        return {"steps": len(self.step_s), "mean_step_ms": _mean_ms(self.step_s),
                "decode_steps": len(self.decode_step_s), "mean_decode_step_ms": _mean_ms(self.decode_step_s)}


class InprocessEngine:
    """One loaded engine, run once per arrival schedule (a sweep loads the model once)."""

    def __init__(self, model_dir: str, dtype: str = "auto"):
        from tideflow.config import engine_config
        from tideflow.runtime.engine.driver import EngineDriver
        from tideflow.runtime.engine.engine import Engine

        self.engine = Engine(engine_config(model_dir, dtype=dtype), detokenize=False)
        self.driver = EngineDriver(self.engine)
        self._next_id = 0
        self._warm_up()

    def _add(self, prompt: list[int], max_tokens: int) -> str:
        from tideflow import SamplingParams

        rid = str(self._next_id)
        self._next_id += 1
        self.engine.add_request(rid, prompt, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        return rid

    def _warm_up(self) -> None:
        """One short request first: the first steps pay one-time costs (kernel compilation)."""
        self._add(list(range(FIRST_ID, FIRST_ID + 8)), 4)
        while self.engine.has_unfinished():
            self.driver.step()

    def run(self, trace: list[TraceRequest], offsets: np.ndarray, max_concurrency: int | None = None) -> InprocessRun:
        """Admit request i once `offsets[i]` seconds have passed (and a slot is free under
        `max_concurrency`), stepping the engine in between, until every request finished."""
        records = [RequestRecord(len(r.prompt_token_ids), r.max_tokens) for r in trace]
        waiting = deque(range(len(trace)))
        index: dict[str, int] = {}  # engine request id -> trace index
        steps, decode_steps = [], []
        start = time.perf_counter()
        while waiting or index:
            now = time.perf_counter()
            while waiting and start + offsets[waiting[0]] <= now and (not max_concurrency or len(index) < max_concurrency):
                i = waiting.popleft()
                records[i].send_time = now
                index[self._add(trace[i].prompt_token_ids, trace[i].max_tokens)] = i
            if not index:
                time.sleep(max(0.0, start + offsets[waiting[0]] - time.perf_counter()))
                continue
            t0 = time.perf_counter()
            out = self.driver.step()  # drops the requests it finished
            t1 = time.perf_counter()
            steps.append(t1 - t0)
            if out.decode_only:
                decode_steps.append(t1 - t0)
            for row, rid in enumerate(out.request_ids):
                record = records[index[rid]]
                record.chunk_times.append(t1)
                record.output_tokens += out.token_offsets[row + 1] - out.token_offsets[row]
            for rid in out.finished_requests:
                del index[rid]
        return InprocessRun(records, time.perf_counter() - start, steps, decode_steps)


def compare(run: InprocessRun, http: dict) -> dict:
    """The in-process run's metrics next to the HTTP run's (`compute_metrics` output): step
    times, ITL and TPOT, and what serving adds per token on top of the engine."""
    from tideflow.bench.serve_metrics import compute_metrics

    ours = compute_metrics(run.records, run.duration_s)
    out = {**run.summary(), **{k: ours[k] for k in ("completed", "failed", "total_output_tokens", "mean_itl_ms",
                                                    "median_itl_ms", "mean_tpot_ms", "median_tpot_ms", "mean_ttft_ms")}}
    out["itl_minus_decode_step_ms"] = _minus(http["mean_itl_ms"], out["mean_decode_step_ms"])
    out["tpot_minus_inprocess_tpot_ms"] = _minus(http["mean_tpot_ms"], out["mean_tpot_ms"])
    return out


def _mean_ms(values_s: list[float]) -> float | None:
    return 1e3 * statistics.fmean(values_s) if values_s else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
