"""Symmetric InfoNCE is symmetric and matches its definition; under DDP it equals the full batch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from s4v_retrieval.loss import all_gather_with_grad, symmetric_infonce

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_loss_is_the_mean_of_row_and_column_cross_entropy() -> None:
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    target = torch.arange(5)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert symmetric_infonce(logits).item() == pytest.approx(expected.item())


def test_loss_is_symmetric_in_texts_and_videos() -> None:
    logits = torch.randn(7, 7, generator=torch.Generator().manual_seed(1))
    assert symmetric_infonce(logits).item() == pytest.approx(symmetric_infonce(logits.T).item())


def test_confident_matching_gives_near_zero_loss_and_confusion_gives_log_batch() -> None:
    assert symmetric_infonce(100.0 * torch.eye(4)).item() < 1e-6
    assert symmetric_infonce(torch.zeros(4, 4)).item() == pytest.approx(
        torch.log(torch.tensor(4.0))
    )


def test_non_square_logits_are_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        symmetric_infonce(torch.zeros(3, 4))


def test_gather_without_a_process_group_is_the_identity() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x


def _run_ranks(world: int, tmp_path: Path) -> list[dict]:
    init_file = tmp_path / f"init-{world}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(rank),
                str(world),
                str(init_file),
                str(tmp_path / f"out-{world}-{rank}.pt"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    return [torch.load(tmp_path / f"out-{world}-{r}.pt") for r in range(world)]


def _full_batch_in_this_process() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    spec = importlib.util.spec_from_file_location("s4v_test_ddp_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    model = worker.TwoTower()
    loss = symmetric_infonce(model(*worker.batch()))
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.processes
def test_ddp_gathered_loss_and_gradients_equal_one_process_with_the_full_batch(
    tmp_path: Path,
) -> None:
    loss, grads = _full_batch_in_this_process()
    for result in _run_ranks(2, tmp_path):
        # Every rank scores all 8 x 8 pairs, so each sees the full-batch loss ...
        torch.testing.assert_close(result["loss"], loss)
        # ... and after DDP-style gradient averaging the update is the full-batch one.
        for name, grad in grads.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-5, atol=1e-6)
