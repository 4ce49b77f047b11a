"""Every environment variable tideflow reads, in one place."""

from __future__ import annotations

import os
import pathlib


def cache_dir() -> pathlib.Path:
    """TIDEFLOW_CACHE_DIR: where generated artefacts (the default model) are kept.
    Defaults to $XDG_CACHE_HOME/tideflow or ~/.cache/tideflow."""
    explicit = os.environ.get("TIDEFLOW_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "tideflow"
