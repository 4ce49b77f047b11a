"""Printing and plotting the serving benchmark's results: one run as a `Label: value` table laid
out like `vllm bench serve`'s (so the two read side by side), a sweep as one row per rate, and
the sweep's throughput and tail TTFT against rate as a PNG.
"""

from __future__ import annotations

from pathlib import Path

WIDTH, LABEL_WIDTH = 50, 40
_SECTIONS = (  # metric -> (section title, label abbreviation)
    ("ttft", "Time to First Token", "TTFT"),
    ("tpot", "Time per Output Token (excl. 1st token)", "TPOT"),
    ("itl", "Inter-token Latency", "ITL"),
    ("e2el", "End-to-end Latency", "E2EL"),
)
_STAT_LABELS = (("mean", "Mean"), ("median", "Median"), ("p90", "P90"), ("p99", "P99"))


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _row(label: str, value) -> str:
    return f"{label + ':':<{LABEL_WIDTH}}{_fmt(value)}"


def _rule(title: str = "", fill: str = "-") -> str:
    return f"{title:{fill}^{WIDTH}}"


def rate_label(rate: float | str) -> str:
    """How a rate is shown and stored: "inf", or the number ("4", "0.5")."""
    return "inf" if rate == "inf" or rate == float("inf") else f"{float(rate):g}"


def format_run(run: dict) -> str:
    """One run's result (see `tideflow.bench.serve.run_once`) as a table."""
    lines = [
        _rule(" Serving Benchmark Result ", "="),
        _row("Endpoint", run["endpoint"]),
        _row("Request rate (req/s)", rate_label(run["request_rate"])),
        _row("Burstiness", run["burstiness"]),
        _row("Max concurrency", run["max_concurrency"]),
        _row("Successful requests", run["completed"]),
        _row("Failed requests", run["failed"]),
    ]
    if run["first_error"]:
        lines.append(_row("First error", run["first_error"]))
    lines += [
        _row("Benchmark duration (s)", run["duration_s"]),
        _row("Total input tokens", run["total_input_tokens"]),
        _row("Total generated tokens", run["total_output_tokens"]),
        _row("Request throughput (req/s)", run["request_throughput"]),
        _row("Output token throughput (tok/s)", run["output_throughput"]),
        _row("Total token throughput (tok/s)", run["total_token_throughput"]),
    ]
    if run["goodput"] is not None:
        slos = ", ".join(f"{name}<={ms:g}" for name, ms in run["slos_ms"].items())
        lines += [_row("Request goodput (req/s)", run["goodput"]), _row("Goodput SLOs (ms)", slos)]
    for name, title, short in _SECTIONS:
        lines.append(_rule(title))
        lines += [_row(f"{label} {short} (ms)", run[f"{stat}_{name}_ms"]) for stat, label in _STAT_LABELS]
    if "inprocess" in run:
        lines += _inprocess_rows(run["inprocess"])
    lines.append(_rule(fill="="))
    return "\n".join(lines)


def _inprocess_rows(ip: dict) -> list[str]:
    return [
        _rule(" In-process engine, same requests "),
        _row("In-process mean step (ms)", ip["mean_step_ms"]),
        _row("In-process mean decode step (ms)", ip["mean_decode_step_ms"]),
        _row("In-process mean ITL (ms)", ip["mean_itl_ms"]),
        _row("In-process mean TPOT (ms)", ip["mean_tpot_ms"]),
        _row("Mean ITL over HTTP - decode step (ms)", ip["itl_minus_decode_step_ms"]),
        _row("Mean TPOT over HTTP - in-process (ms)", ip["tpot_minus_inprocess_tpot_ms"]),
    ]


def format_sweep(runs: list[dict]) -> str:
    """One row per rate: the throughput and the latencies that bend first as load rises."""
    columns = [  # (header, value of a run)
        ("rate", lambda r: rate_label(r["request_rate"])),
        ("ok", lambda r: r["completed"]),
        ("failed", lambda r: r["failed"]),
        ("req/s", lambda r: r["request_throughput"]),
        ("output tok/s", lambda r: r["output_throughput"]),
        ("p99 TTFT ms", lambda r: r["p99_ttft_ms"]),
        ("median TPOT ms", lambda r: r["median_tpot_ms"]),
    ]
    if any(r["goodput"] is not None for r in runs):
        columns.append(("goodput req/s", lambda r: r["goodput"]))
    if any("inprocess" in r for r in runs):
        columns.append(("ITL - step ms", lambda r: r.get("inprocess", {}).get("itl_minus_decode_step_ms")))
    header = [name for name, _ in columns]
    rows = [header] + [[_fmt(value(r)) for _, value in columns] for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_sweep(runs: list[dict], path: str | Path) -> Path:
    """Output throughput and p99 TTFT against request rate, one panel each, written as a PNG.
    Rates, sorted, sit at evenly spaced positions labelled with their values, so `inf` has a place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda r: float(r["request_rate"]))
    xs = list(range(len(runs)))
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 6))
    try:
        top.plot(xs, [r["output_throughput"] for r in runs], marker="o")
        top.set_ylabel("output tokens/s")
        top.set_title("tideflow bench serve")
        bottom.plot(xs, [_nan(r["p99_ttft_ms"]) for r in runs], marker="o", color="tab:red")
        bottom.set_ylabel("p99 TTFT (ms)")
        bottom.set_xlabel("request rate (req/s)")
        bottom.set_xticks(xs, [rate_label(r["request_rate"]) for r in runs])
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value
