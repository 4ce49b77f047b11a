"""The server's Prometheus metrics, under vLLM's names with the `tideflow:` prefix.

Each server (one per Serve replica) has its own `CollectorRegistry`, never the global one.
Request metrics are measured in the server as outputs arrive: latencies from the moment
the request reached the replica. Engine metrics (running / waiting requests, KV usage,
prefix-cache counters) are read from the graph's `stats()` at scrape time: counts summed
over the engine replicas of every stage, KV usage averaged over them.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tideflow.runtime.dataflow.collector import OutputDelta

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LABELS = ["model_name"]
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)
_LONG_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class GraphStats:
    """Engine metrics from the latest `GraphHandle.stats()`; a prometheus_client collector."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.values = {"num_requests_running": 0, "num_requests_waiting": 0, "kv_cache_usage_perc": 0.0,
                       "prefix_cache_queries": 0, "prefix_cache_hits": 0}

    def update(self, stats: dict) -> None:
        engines = [r for stage, replicas in stats.items() if stage != "collector"
                   for r in replicas if r and "kv_cache_usage_perc" in r]
        if not engines:
            return
        for key in ("num_requests_running", "num_requests_waiting", "prefix_cache_queries", "prefix_cache_hits"):
            self.values[key] = sum(r.get(key, 0) for r in engines)
        self.values["kv_cache_usage_perc"] = sum(r["kv_cache_usage_perc"] for r in engines) / len(engines)

    def collect(self):
        v, labels = self.values, [self.model_name]
        for name, doc in (
            ("num_requests_running", "Requests running in the engines (summed over engine replicas)."),
            ("num_requests_waiting", "Requests waiting in the engines' queues (summed over engine replicas)."),
            ("kv_cache_usage_perc", "Fraction of KV-cache blocks in use, 0 to 1 (averaged over engine replicas)."),
        ):
            g = GaugeMetricFamily(f"tideflow:{name}", doc, labels=_LABELS)
            g.add_metric(labels, v[name])
            yield g
        for name, doc in (
            ("prefix_cache_queries", "Prefix-cache queries, in blocks (summed over engine replicas)."),
            ("prefix_cache_hits", "Prefix-cache hits, in blocks (summed over engine replicas)."),
        ):
            c = CounterMetricFamily(f"tideflow:{name}", doc, labels=_LABELS)
            c.add_metric(labels, v[name])
            yield c


class ServeMetrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        r, m = self.registry, model_name

        def histogram(name, doc, buckets):
            return Histogram(f"tideflow:{name}", doc, _LABELS, buckets=buckets, registry=r).labels(m)

        self.ttft = histogram("time_to_first_token_seconds", "Time from arrival to the first token.", _TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between successive output tokens.", _ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Time from arrival to the last token.", _LONG_BUCKETS)
        self.queue = histogram("request_queue_time_seconds",
                               "Time a request waited in the server's admission queue.", _LONG_BUCKETS)
        self.prompt_tokens = Counter("tideflow:prompt_tokens", "Prompt tokens processed.", _LABELS,
                                     registry=r).labels(m)
        self.generation_tokens = Counter("tideflow:generation_tokens", "Tokens generated.", _LABELS,
                                         registry=r).labels(m)
        self._success = Counter("tideflow:request_success", "Completions finished, by finish reason.",
                                _LABELS + ["finished_reason"], registry=r)
        self._rejected = Counter("tideflow:request_rejected", "Requests refused (429) because the replica was full.",
                                 _LABELS, registry=r).labels(m)
        self._unauthorized = Counter("tideflow:request_unauthorized",
                                     "Requests refused (401) for a missing or wrong API key.", _LABELS,
                                     registry=r).labels(m)
        self._rate_limited = Counter("tideflow:request_rate_limited",
                                     "Requests refused (429) by their key's limits, by limit: requests, tokens, "
                                     "concurrency.", _LABELS + ["limit"], registry=r)
        self._shed = Counter("tideflow:request_shed", "Requests refused (503) while the circuit breaker was open.",
                             _LABELS, registry=r).labels(m)
        self.breaker_state = Gauge("tideflow:circuit_breaker_state",
                                   "The graph's circuit breaker: 0 closed, 1 half-open, 2 open.", _LABELS,
                                   registry=r).labels(m)
        self.model_name = model_name
        self.graph = GraphStats(model_name)
        r.register(self.graph)

    def tracker(self, arrival: float) -> RequestTracker:
        return RequestTracker(self, arrival)

    def rejected(self) -> None:
        self._rejected.inc()

    def unauthorized(self) -> None:
        self._unauthorized.inc()

    def rate_limited(self, limit: str) -> None:
        self._rate_limited.labels(self.model_name, limit).inc()

    def shed(self) -> None:
        self._shed.inc()

    def exposition(self, stats: dict | None) -> bytes:
        if stats is not None:
            self.graph.update(stats)
        return generate_latest(self.registry)


class RequestTracker:
    """Observes one graph request's outputs as they arrive (times from `time.monotonic()`)."""

    __slots__ = ("metrics", "arrival", "last", "tokens", "started", "reasons")

    def __init__(self, metrics: ServeMetrics, arrival: float):
        self.metrics = metrics
        self.arrival = arrival
        self.last = arrival  # time of the latest token
        self.tokens = 0  # tokens seen over all completions
        self.started = False  # prompt counted
        self.reasons: list[str] = []  # finish reason of each completion finished so far

    def observe(self, delta: OutputDelta) -> None:
        """Count what one delta of the request's output adds (its new tokens share the gap
        since the previous delta)."""
        m, now = self.metrics, time.monotonic()
        if not self.started and delta.prompt_token_ids:
            self.started = True
            m.prompt_tokens.inc(len(delta.prompt_token_ids))
        new = sum(len(c.token_ids) for c in delta.completions)
        if new > 0:
            if self.tokens == 0:
                m.ttft.observe(now - self.arrival)
                new_gaps = new - 1
            else:
                new_gaps = new
            for _ in range(new_gaps):  # tokens that arrived together share the gap
                m.itl.observe((now - self.last) / new)
            m.generation_tokens.inc(new)
            self.tokens, self.last = self.tokens + new, now
        self.reasons += [c.finish_reason for c in delta.completions if c.finish_reason is not None]
        if delta.finished:
            m.e2e.observe(now - self.arrival)
            for reason in self.reasons:
                m._success.labels(m.model_name, reason).inc()
