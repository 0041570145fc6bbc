"""Warm-up + cosine schedule values, atomic checkpoint writes, safe loads and resume refusal."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from s4v_orchestration.checkpoint import (
    CheckpointError,
    check_resumable,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from s4v_orchestration.schedule import build_scheduler, warmup_cosine_factor


def test_warmup_is_linear_then_cosine_reaches_zero_at_the_end() -> None:
    factors = [warmup_cosine_factor(s, warmup_steps=4, total_steps=12) for s in range(13)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == 1.0  # first cosine step
    assert factors[8] == pytest.approx(0.5)  # halfway through the 8 decay steps
    assert factors[12] == pytest.approx(0.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[3:]))


def test_scheduler_steps_per_optimizer_step_and_resumes_from_its_state() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * warmup_cosine_factor(s, warmup_steps=2, total_steps=6) for s in range(6)]
    assert lrs == pytest.approx(expected)

    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = build_scheduler(opt2, warmup_steps=2, total_steps=6)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert sched2.last_epoch == 6
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_checkpoint_round_trips_with_weights_only(tmp_path) -> None:
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "config": {"solver": {"lr": 0.1}}}
    path = save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert loaded["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "s4v-checkpoint", "version": 1, "obj": random.Random()}, path)
    with pytest.raises(CheckpointError, match="not a readable s4v checkpoint"):
        load_checkpoint(path)


def test_foreign_file_is_refused_with_a_hint(tmp_path) -> None:
    path = tmp_path / "released.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="s4v convert side4video"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_refuses_another_config_or_backbone_and_ignores_paths() -> None:
    backbone = {"name": "s4v-tiny", "pretrained": None, "sha256": None}
    saved = {
        "config": {
            "solver": {"lr": 0.1},
            "output_dir": "/a",
            "data": {"root": "/x", "batch_size": 4},
        },
        "backbone": backbone,
    }
    same_but_moved = {
        "solver": {"lr": 0.1},
        "output_dir": "/b",
        "data": {"root": "/y", "batch_size": 4},
    }
    check_resumable(saved, "last.pt", same_but_moved, backbone)
    with pytest.raises(CheckpointError, match=r"solver.lr: 0.1 \(checkpoint\) vs 0.2"):
        check_resumable(saved, "last.pt", same_but_moved | {"solver": {"lr": 0.2}}, backbone)
    with pytest.raises(CheckpointError, match="backbone"):
        check_resumable(saved, "last.pt", same_but_moved, backbone | {"name": "ViT-B-16"})


def test_rng_state_round_trips_through_a_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]
