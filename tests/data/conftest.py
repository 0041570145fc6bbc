"""Shared fixtures: a tiny synthetic dataset (real H.264 files and JPEG frames) per test session."""

from __future__ import annotations

import pytest

from s4v_data.synthetic import SyntheticInfo, generate


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> SyntheticInfo:
    """3 videos per class (2 train, 1 val), 12 frames of 32x32, with captions."""
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    return generate(
        root, seed=7, videos_per_class=3, num_frames=12, size=32, val_fraction=0.34, captions=True
    )
