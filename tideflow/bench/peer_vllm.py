"""vLLM's CPU build as a peer in tideflow's benchmarks, run from its own virtual environment.

vLLM pins its own torch and transformers, so it cannot share tideflow's interpreter: it lives in
`<repo>/.venv-vllm` (`make bench-peers`; `--vllm-env PATH` or `$TIDEFLOW_VLLM_ENV` points
elsewhere) and runs as a subprocess. On a 2-core machine it has two configurations worth
reporting (docs/benchmarks.md): its default, which reserves one core for its front end and
computes on the other, and `2t`, which computes on both.

`VllmOffline` is the offline system: `peers/vllm_offline_runner.py` under vLLM's interpreter,
kept alive across the warm-up and the timed call, talking JSON lines over two pipes of its
own (vLLM logs to stdout/stderr, which go to a log file). Its `generate` returns the runner's
own timing of `llm.generate`, so pipes and JSON are not counted against vLLM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tideflow.bench.machine import tree_cpu_s
from tideflow.bench.systems import Generation
from tideflow.bench.workloads import TraceRequest

ENV_VAR = "TIDEFLOW_VLLM_ENV"
RUNNER = Path(__file__).parent / "peers" / "vllm_offline_runner.py"
KV_CACHE_GIB = "1"  # VLLM_CPU_KVCACHE_SPACE: the 1 GiB KV pool tideflow and hf-cb get
CONFIGS: dict[str, dict[str, str]] = {  # name -> environment on top of the KV space
    "default": {},  # vLLM's own choice: on 2 cores, 1 computes and 1 is reserved
    "2t": {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
}
DTYPES = ("float32", "bfloat16")  # what vLLM's CPU build runs (no float64)


class PeerEnvironmentError(RuntimeError):
    """The peer's environment is missing or broken; the CLI prints it and exits with 2."""


def default_env() -> Path:
    """`$TIDEFLOW_VLLM_ENV`, else `.venv-vllm` at the root of the repository tideflow runs from."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return Path(__file__).resolve().parents[2] / ".venv-vllm"


def resolve_env(path: str | os.PathLike | None = None) -> Path:
    """The peer environment's root (`path`, else `default_env()`), checked to hold vLLM's
    interpreter; raises PeerEnvironmentError saying how to build it when it does not."""
    root = Path(path) if path else default_env()
    if not (root / "bin" / "python").exists() or not (root / "bin" / "vllm").exists():
        raise PeerEnvironmentError(f"vLLM peer environment not found at {root}: run `make bench-peers` "
                                   f"(or point --vllm-env / ${ENV_VAR} at one)")
    return root


def peer_environ(config: str) -> dict[str, str]:
    """This process's environment plus the KV space and the configuration's thread settings."""
    if config not in CONFIGS:
        raise ValueError(f"vLLM config: expected one of {sorted(CONFIGS)}, got {config!r}")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # tideflow's paths must not shadow the peer's packages
    env.update(VLLM_CPU_KVCACHE_SPACE=KV_CACHE_GIB, **CONFIGS[config])
    return env


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a peer's log file, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class VllmOffline:
    """`vllm.LLM` in a subprocess of the peer environment, one configuration of `CONFIGS`."""

    def __init__(self, model_dir: str, dtype: str, config: str = "default", env_path: str | os.PathLike | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"vLLM's CPU build runs {' or '.join(DTYPES)}, not {dtype}")
        root = resolve_env(env_path)
        environ = peer_environ(config)
        fd, log = tempfile.mkstemp(prefix=f"tideflow-vllm-{config}-", suffix=".log")
        self.log_path = Path(log)
        cmd_r, self._cmd_w = os.pipe()
        self._reply_r, reply_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [str(root / "bin" / "python"), str(RUNNER), str(cmd_r), str(reply_w), str(model_dir), dtype],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, env=environ,
                pass_fds=(cmd_r, reply_w), start_new_session=True,
            )
        except BaseException:
            os.close(self._cmd_w)
            os.close(self._reply_r)
            raise
        finally:
            os.close(fd)
            os.close(cmd_r)
            os.close(reply_w)  # the child holds its copies: EOF here means it died
        self._commands = os.fdopen(self._cmd_w, "w", encoding="utf-8")
        self._replies = os.fdopen(self._reply_r, "r", encoding="utf-8")
        try:
            ready = self._reply("loading")
        except BaseException:
            self.close()
            raise
        self.llm_load_s = ready["load_s"]  # `vllm.LLM(...)` alone, as timed by the runner
        self.version = ready.get("vllm_version")

    def _reply(self, doing: str) -> dict:
        line = self._replies.readline()
        if not line:
            code = self.proc.wait(timeout=30)
            raise RuntimeError(f"the vLLM runner exited (code {code}) while {doing}; its log, {self.log_path}, ends:\n"
                               f"{log_tail(self.log_path)}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"the vLLM runner failed while {doing} (log: {self.log_path}):\n{msg['error']}")
        return msg

    def cpu_s(self) -> float:
        """CPU seconds used so far by the runner and the processes it started (its engine core),
        so that the benchmark does not count the peer's own work as other processes' noise."""
        return tree_cpu_s(self.proc.pid)

    def generate(self, trace: list[TraceRequest]) -> Generation:
        body = [{"prompt_token_ids": list(r.prompt_token_ids), "max_tokens": r.max_tokens} for r in trace]
        self._commands.write(json.dumps({"cmd": "generate", "trace": body}) + "\n")
        self._commands.flush()
        msg = self._reply("generating")
        token_ids = msg["token_ids"]
        return Generation(token_ids, sum(map(len, token_ids)), wall_s=msg["wall_s"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._commands.write(json.dumps({"cmd": "exit"}) + "\n")
                self._commands.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the runner's own session: it and its engine core
                self.proc.wait()
        for f in (self._commands, self._replies):
            try:
                f.close()
            except OSError:
                pass
