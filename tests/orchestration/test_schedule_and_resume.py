"""Warm-up + cosine schedule values, resume refusal and RNG states through a checkpoint."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from s4v_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from s4v_orchestration.resume import check_resumable, restore_rng_state, rng_state
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
    save_checkpoint(
        tmp_path / "rng.pt", {"task": "t", "backbone": {}, "model": {}, "rng": rng_state()}
    )
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]
