"""Shared fixtures: one small synthetic dataset per test session and tiny run configs on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from s4v_orchestration.config import RunConfig
from s4v_orchestration.overrides import load_run_config

# Small enough to generate in seconds: 8 classes x 4 videos (3 train, 1 val), 16 frames of 32 px.
SYNTHETIC = {
    "data.synthetic.videos_per_class": 5,
    "data.synthetic.num_frames": 16,
    "data.synthetic.size": 32,
}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from s4v_data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate(root, seed=0, videos_per_class=5, num_frames=16, size=32)
    return root


def _overrides(root: Path, out: Path, **extra: object) -> list[str]:
    """``--set`` items for a fast tiny run on the session's synthetic data (no tracking)."""
    values = {
        **SYNTHETIC,
        "data.root": root,
        "output_dir": out,
        "data.batch_size": 4,
        "data.num_workers": 0,
        "cpu_threads": 1,
        "solver.epochs": 2,
        "solver.warmup_epochs": 1,
        "tracking.enabled": False,
        "tracking.system_metrics": False,
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture
def tiny_overrides(synthetic_root: Path, tmp_path: Path):
    """``tiny_overrides(out_name, **fields)`` -> ``--set`` items of a fast tiny run."""

    def make(out_name: str = "run", **extra: object) -> list[str]:
        return _overrides(synthetic_root, tmp_path / out_name, **extra)

    return make


@pytest.fixture
def tiny_config(tiny_overrides):
    """``tiny_config(out_name, **fields)`` -> a validated RunConfig of a fast tiny run."""

    def make(out_name: str = "run", **extra: object) -> RunConfig:
        return load_run_config(
            "recognition", "synthetic", overrides=tiny_overrides(out_name, **extra)
        )

    return make
