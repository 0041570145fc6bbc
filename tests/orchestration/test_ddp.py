"""DDP through torchrun: 2 CPU processes (gloo) train like 1 process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from s4v_core.checkpoint import load_checkpoint
from s4v_orchestration.overrides import load_run_config
from s4v_orchestration.train import train

# A linear probe has no BatchNorm, whose per-process batch statistics would (as in the reference,
# which does not sync BN) make the two runs differ by more than float rounding.
COMMON = {
    "model.method": "linear-probe",
    "solver.epochs": 1,
    "solver.lr": 0.01,
    "eval.final_test": False,
}


@pytest.mark.slow
@pytest.mark.processes
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(
    tiny_overrides, tmp_path
) -> None:
    single_sets = tiny_overrides("single", **COMMON, **{"data.batch_size": 4})
    train(load_run_config("recognition", "synthetic", overrides=single_sets))

    ddp_sets = tiny_overrides("ddp", **COMMON, **{"data.batch_size": 2})
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "s4v_orchestration", "run", "recognition", "--dataset", "synthetic", "--no-tracking",
        *[arg for item in ddp_sets for arg in ("--set", item)],
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    single = load_checkpoint(tmp_path / "single" / "last.pt")
    ddp = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["step"] == single["step"] == 8  # 32 training videos / global batch 4
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, atol=1e-5, rtol=1e-4)
    assert ddp["metrics"]["val/top1"] == single["metrics"]["val/top1"]
    assert ddp["metrics"]["train/epoch_loss"] == pytest.approx(
        single["metrics"]["train/epoch_loss"], rel=1e-4
    )
