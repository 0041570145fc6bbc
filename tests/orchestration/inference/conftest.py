"""Fixtures of the inference tests: tiny "trained" models, written as ``s4v run`` writes them.

Training is replaced by perturbing every trained tensor with a seeded draw, so a test that
reloads the file can tell the trained weights from a fresh build in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s4v_core.checkpoint import save_checkpoint
from s4v_data import read_labels
from s4v_orchestration.config import RunConfig
from s4v_orchestration.tasks.recognition import build_recognition_model
from s4v_orchestration.tasks.retrieval import build_retrieval_model


def perturb(model: torch.nn.Module, seed: int = 5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.trainable_state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))


def write_checkpoint(config: RunConfig, path: Path) -> torch.nn.Module:
    """A checkpoint of a perturbed model of ``config`` at ``path``; returns that model (eval)."""
    config = config.with_defaults()
    extra = {}
    if config.task == "recognition":
        names = read_labels(Path(config.data.root) / "labels.csv")
        model = build_recognition_model(config, len(names))
        extra["class_names"] = list(names)
    else:
        model = build_retrieval_model(config)
    perturb(model)
    save_checkpoint(
        path,
        {
            "task": config.task,
            "config": config.model_dump(mode="json"),
            "backbone": model.backbone_identity,
            "model": model.trainable_state_dict(),
            "epoch": 1,
            "metrics": {"val/top1": 50.0},
            "mlflow_run_id": None,
            **extra,
        },
    )
    return model.eval()


@pytest.fixture(scope="session")
def captioned_root(tmp_path_factory) -> Path:
    """The captioned synthetic set at test size: 8 classes x 5 videos, 16 frames of 32 px."""
    from s4v_data.synthetic import generate

    root = tmp_path_factory.mktemp("captioned") / "data"
    generate(root, seed=0, videos_per_class=5, num_frames=16, size=32, captions=True)
    return root


@pytest.fixture
def recognition_checkpoint(tiny_config, tmp_path):
    """(checkpoint path, the perturbed model it holds, its config) of a tiny recognition run."""
    config = tiny_config("run").with_defaults()
    path = tmp_path / "best.pt"
    return path, write_checkpoint(config, path), config


@pytest.fixture
def retrieval_checkpoint(captioned_root, tmp_path):
    """(checkpoint path, the perturbed model it holds, its config) of a tiny retrieval run."""
    from s4v_orchestration.overrides import load_run_config

    config = load_run_config(
        "retrieval",
        "synthetic",
        overrides=[
            f"data.root={captioned_root}",
            f"output_dir={tmp_path / 'rt'}",
            "tracking.enabled=false",
            "data.synthetic.videos_per_class=5",
            "data.synthetic.num_frames=16",
            "data.synthetic.size=32",
        ],
    ).with_defaults()
    path = tmp_path / "rt-best.pt"
    return path, write_checkpoint(config, path), config
