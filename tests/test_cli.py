"""The command line: `tideflow demo` runs the main job end to end."""

from __future__ import annotations

import pytest

from tideflow.cli import main


def test_demo_generates_on_the_default_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TIDEFLOW_CACHE_DIR", str(tmp_path))
    assert main(["demo", "--num-prompts", "4", "--max-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "4 requests" in out and "tokens/s" in out
    assert out.count("prompt: ") == 4
    # the default model was written once into the cache and is reused
    from tideflow.models.default import DEFAULT_MODEL_NAME, default_model_dir

    assert default_model_dir() == tmp_path / DEFAULT_MODEL_NAME
    assert (tmp_path / DEFAULT_MODEL_NAME / "model.safetensors").exists()


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
