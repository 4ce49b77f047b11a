"""Benchmarks: seeded workloads (`workloads`), the benchmark model (`bench_model`), the systems
compared (`systems`), machine probes (`machine`) and the offline throughput comparison (`offline`).

Run with `tideflow bench offline` (or `python -m tideflow.bench.offline`). Benchmarks report
ratios measured side by side in one run; tests check behaviour, never timings.
"""

from tideflow.bench.workloads import TraceRequest, mixed_trace, shared_prefix_trace, trace_stats

__all__ = ["TraceRequest", "mixed_trace", "shared_prefix_trace", "trace_stats"]
