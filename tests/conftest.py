"""Session fixtures: tiny models written once per test session into a temporary directory."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """kind -> directory of a tiny random model of that kind, written on first use."""
    from tideflow.testing.tiny_models import write_tiny_model

    root = tmp_path_factory.mktemp("models")
    made: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in made:
            made[kind] = str(write_tiny_model(kind, root / kind, seed=0))
        return made[kind]

    return get


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance for the whole test session. Logical CPUs are oversubscribed so that
    several small graphs can be deployed at once on a 2-core machine."""
    import pathlib

    import ray

    root = str(pathlib.Path(__file__).resolve().parent.parent)
    if not ray.is_initialized():
        ray.init(
            num_cpus=8,
            include_dashboard=False,
            namespace="tideflow",
            runtime_env={"env_vars": {"PYTHONPATH": root, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()
