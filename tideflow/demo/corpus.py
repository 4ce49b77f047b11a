"""The Python standard library's source as a text corpus, and perplexity over it.

The embedded demo model (`tideflow.models.demo_model`) is trained on this corpus by
`tools/train_demo_model.py`, and its tests measure held-out perplexity with the same helpers,
so the split and the measurement cannot drift apart.

The split is by file: a file is held out when the SHA-256 of its path relative to the
standard-library root falls in the first `HELDOUT_PERCENT` of the hash space. It depends only
on the path, so it is the same on every machine that has the file.
`torch` is imported inside `perplexity` only.
"""

from __future__ import annotations

import hashlib
import math
import os
import pathlib
import sysconfig
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel

SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 5

# Folders left out of the corpus: test suites (huge, repetitive fixtures), codec tables
# (`encodings/` is mostly generated charmap literals) and third-party packages.
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "encodings", "site-packages", "__pycache__"})


def stdlib_root() -> pathlib.Path:
    """The directory of the running interpreter's pure-Python standard library."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def is_heldout(relative_path: str) -> bool:
    """Whether the file at `relative_path` (POSIX, relative to the stdlib root) is held out."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def stdlib_files(split: str, root: str | pathlib.Path | None = None) -> list[pathlib.Path]:
    """The `*.py` files of one split ("train" or "heldout") under `root` (default: the stdlib),
    sorted by relative path. Raises ValueError for an unknown split or a missing root."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = stdlib_root() if root is None else pathlib.Path(root)
    if not root.is_dir():
        raise ValueError(f"corpus root {str(root)!r} is not a directory")
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS]  # pruned, not walked
        for name in names:
            if not name.endswith(".py"):
                continue
            relative = (pathlib.Path(folder) / name).relative_to(root).as_posix()
            if is_heldout(relative) == (split == "heldout"):
                files.append(relative)
    return [root / relative for relative in sorted(files)]


def read_documents(files: Iterable[pathlib.Path], max_chars: int | None = None) -> list[str]:
    """The text of each file (undecodable bytes replaced), in order, stopping once
    `max_chars` characters are collected (the last document is cut to fit)."""
    docs: list[str] = []
    total = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if max_chars is not None:
            text = text[: max_chars - total]
        if text:
            docs.append(text)
            total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    return docs


def token_stream(tokenizer: Any, docs: Sequence[str], eos_id: int) -> list[int]:
    """All documents' token ids (no special tokens added) concatenated, each followed by `eos_id`."""
    ids: list[int] = []
    for encoding in tokenizer(list(docs), add_special_tokens=False, verbose=False)["input_ids"]:
        ids.extend(encoding)
        ids.append(eos_id)
    return ids


def perplexity(model: PreTrainedModel, ids: Sequence[int], seq_len: int, max_windows: int | None = None) -> float:
    """exp(mean next-token negative log-likelihood) of `model` over `ids`, cut into
    non-overlapping windows of `seq_len` tokens (a shorter tail window is dropped); each
    window is scored on its own, from its first token. At most `max_windows` windows.

    Raises ValueError when `seq_len` < 2 or `ids` holds no full window.
    """
    import torch

    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    windows = len(ids) // seq_len if max_windows is None else min(len(ids) // seq_len, max_windows)
    if windows < 1:
        raise ValueError(f"ids holds {len(ids)} tokens, fewer than one window of seq_len={seq_len}")
    data = torch.tensor(list(ids[: windows * seq_len]), dtype=torch.long).view(windows, seq_len)
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, windows, 8):
            batch = data[start : start + 8]
            logits = model(input_ids=batch).logits[:, :-1].float()
            targets = batch[:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
            )
            nll += float(losses)
            count += targets.numel()
    return math.exp(nll / count)
