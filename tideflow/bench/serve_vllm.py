"""`tideflow bench serve --compare-vllm`: the same requests, with the same arrivals, against a
`vllm serve` started here from the peer environment (`tideflow.bench.peer_vllm`), reported
beside the tideflow server's run with ratios.

vLLM's server runs alone: it is started, checked with the benchmark's own test request, run
at every rate, and stopped before the tideflow server is measured, so the two never share the
CPU under load. It serves under the tideflow server's model name, so the request bodies are
byte for byte the same. Its log goes to a file whose path is shown when it fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tideflow.bench.peer_vllm import CONFIGS, log_tail, peer_environ, resolve_env

MAX_NUM_SEQS = 64  # tideflow serve's default
STARTUP_TIMEOUT_S = 600.0  # loading, compiling and warming up take minutes on 2 cores
_RATIOS = (  # (metric, label); tideflow / vLLM: < 1 is tideflow better for latencies, > 1 for throughput
    ("output_throughput", "Output token throughput (tok/s)"),
    ("mean_ttft_ms", "Mean TTFT (ms)"),
    ("median_ttft_ms", "Median TTFT (ms)"),
    ("p99_ttft_ms", "P99 TTFT (ms)"),
    ("mean_tpot_ms", "Mean TPOT (ms)"),
    ("median_tpot_ms", "Median TPOT (ms)"),
    ("p99_tpot_ms", "P99 TPOT (ms)"),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """`vllm serve MODEL_DIR` from the peer environment, in one of `peer_vllm.CONFIGS`, as a
    context manager: entering starts it and waits for /health, leaving stops it."""

    def __init__(self, model_dir: str, served_name: str, *, dtype: str = "float32", config: str = "default",
                 env_path: str | os.PathLike | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S):
        if config not in CONFIGS:
            raise ValueError(f"vLLM config: expected one of {sorted(CONFIGS)}, got {config!r}")
        self.root = resolve_env(env_path)
        self.model_dir, self.served_name, self.dtype, self.config = str(model_dir), served_name, dtype, config
        self.startup_timeout_s = startup_timeout_s
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def command(self) -> list[str]:
        return [str(self.root / "bin" / "vllm"), "serve", self.model_dir, "--host", "127.0.0.1", "--port", str(self.port),
                "--dtype", self.dtype, "--max-num-seqs", str(MAX_NUM_SEQS), "--served-model-name", self.served_name,
                "--seed", "0"]

    def __enter__(self) -> VllmServer:
        fd, log = tempfile.mkstemp(prefix=f"tideflow-vllm-serve-{self.config}-", suffix=".log")
        self.log_path = Path(log)
        start = time.perf_counter()
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                         env=peer_environ(self.config), start_new_session=True)
        finally:
            os.close(fd)
        try:
            self._wait_healthy(start)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - start
        return self

    def _wait_healthy(self, start: float) -> None:
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"vllm serve exited with code {code} before it was healthy; its log, "
                                   f"{self.log_path}, ends:\n{log_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.perf_counter() - start > self.startup_timeout_s:
                raise RuntimeError(f"vllm serve was not healthy after {self.startup_timeout_s:.0f} s; "
                                   f"its log is {self.log_path}")
            time.sleep(1.0)

    def stop(self) -> None:
        """SIGTERM to its session (the API server and its engine core), SIGKILL after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=wait_s)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def __exit__(self, *exc) -> None:
        self.stop()


def compare(tideflow_run: dict, vllm_run: dict) -> dict:
    """The headline metrics of both runs at one rate and tideflow / vLLM for each."""
    rows = {}
    for key, _ in _RATIOS:
        ours, theirs = tideflow_run.get(key), vllm_run.get(key)
        rows[key] = {"tideflow": ours, "vllm": theirs,
                     "tideflow/vllm": ours / theirs if ours is not None and theirs else None}
    return {"request_rate": tideflow_run["request_rate"], "metrics": rows}


def format_comparison(comparison: dict, config: str) -> str:
    """A comparison (see `compare`) as a table with one row per metric."""
    from tideflow.bench.serve_report import rate_label

    rows = [("metric", f"vLLM ({config})", "tideflow", "tideflow/vLLM")]
    for key, label in _RATIOS:
        m = comparison["metrics"][key]
        rows.append((label, *("-" if v is None else f"{v:.2f}" for v in (m["vllm"], m["tideflow"], m["tideflow/vllm"]))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"tideflow vs vLLM, same requests and arrivals, rate {rate_label(comparison['request_rate'])} req/s"]
    for k, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("(tideflow/vLLM: above 1 is tideflow ahead for throughput, below 1 for latencies)")
    return "\n".join(lines)
