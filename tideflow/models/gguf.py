"""GGUF checkpoints, as vLLM takes them: `LLM("model.gguf")`, `LLM(dir, gguf_file=...)`,
`tideflow serve --model model.gguf`, or `model: model.gguf` in a graph's options.

transformers reads a GGUF file and dequantizes it (`from_pretrained(dir, gguf_file=name)`, with
the `gguf` package), but will not `save_pretrained` the result. So a GGUF file is turned once
into a plain Hugging Face directory (config, safetensors, tokenizer and chat template from the
file's metadata, generation config): the model is rebuilt from its config and the dequantized
state dict copied in. The directory is cached under the user cache dir, keyed by the file's
content hash, and written atomically (a temporary directory renamed into place), so processes
and actors that load the same file at once all succeed and share one copy. Everything
downstream then loads a plain directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

GGUF_MAGIC = b"GGUF"
_COMPLETE = ".tideflow-complete"  # written last into a cached directory


def cache_root() -> Path:
    """Where converted GGUF checkpoints live: $TIDEFLOW_CACHE_DIR/gguf, else the user cache dir."""
    base = os.environ.get("TIDEFLOW_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "tideflow"
    )
    return Path(base) / "gguf"


def gguf_path(model: str, gguf_file: str | None = None) -> Path | None:
    """The GGUF file that `model` (and `gguf_file`) name, or None when they name no GGUF."""
    if gguf_file is not None:
        return Path(model, gguf_file) if os.path.isdir(model) else Path(gguf_file)
    return Path(model) if str(model).endswith(".gguf") else None


def resolve_model(model: str, gguf_file: str | None = None) -> str:
    """A plain model directory for `model`: itself, or the cached conversion of the GGUF file it
    names (converted now when not cached yet). ValueError naming the file when it is missing,
    not a GGUF, truncated, or of an architecture or quantization transformers cannot load."""
    path = gguf_path(model, gguf_file)
    if path is None:
        return model
    return str(cached(path, _convert))


def cached(path: Path, convert: Callable[[Path, Path], None]) -> Path:
    """The cache directory of GGUF file `path`, made by `convert(path, directory)` on a miss.
    Safe to call from several processes at once: each converts into its own temporary directory
    and the first rename wins; the others throw theirs away and use the winner's."""
    digest = _digest(path)
    final = cache_root() / digest
    if (final / _COMPLETE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=final.parent))
    try:
        convert(path, tmp)
        (tmp / _COMPLETE).write_text(str(path))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first
            if not (final / _COMPLETE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _digest(path: Path) -> str:
    """sha256 of the file's bytes (streamed), after checking it is a GGUF file at all."""
    if not path.is_file():
        raise ValueError(f"model: GGUF file {str(path)!r} does not exist")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"model: {str(path)!r} is not a GGUF file (no GGUF magic at its start)")
        f.seek(0)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:32]


def _convert(path: Path, out: Path) -> None:
    """Dequantize GGUF `path` with transformers and save it into `out` as a plain checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # noqa: BLE001  (gguf and transformers raise many kinds; the reason is kept)
        raise ValueError(f"model: cannot load GGUF file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    config.torch_dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = getattr(plain, "_tied_weights_keys", None) or ()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"model: GGUF file {str(path)!r} does not map onto {type(plain).__name__}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    try:
        GenerationConfig.from_model_config(config).save_pretrained(out)
    except ValueError:  # a config whose generation defaults do not validate: the engine's apply
        pass
