"""Label smoothing, soft-target cross-entropy and mixup/cutmix against known answers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s4v_recognition.losses import (
    classification_loss,
    mix_clips,
    smoothed_targets,
    soft_target_cross_entropy,
)


def test_smoothed_targets_sum_to_one_with_the_true_class_on_top() -> None:
    targets = smoothed_targets(torch.tensor([2, 0]), num_classes=4, smoothing=0.1)
    assert targets.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])
    assert targets[0].tolist() == pytest.approx([0.025, 0.025, 0.925, 0.025])


def test_soft_targets_equal_torch_label_smoothing() -> None:
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    soft = soft_target_cross_entropy(logits, smoothed_targets(labels, 5, 0.1))
    assert soft.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item())
    assert classification_loss(logits, labels, 0.1).item() == pytest.approx(soft.item())


def test_mixup_blends_clips_and_targets_with_the_reversed_batch() -> None:
    torch.manual_seed(0)
    clips = torch.stack([torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)])
    mixed, targets = mix_clips(
        clips, torch.tensor([0, 1]), num_classes=2, mixup_alpha=0.8, cutmix_alpha=0.0, smoothing=0.0
    )
    lam = 1.0 - mixed[0].mean().item()  # clip 0 = lam * 0 + (1 - lam) * 1
    assert torch.allclose(mixed[0], torch.full_like(mixed[0], 1 - lam))
    assert targets[0].tolist() == pytest.approx([lam, 1 - lam], abs=1e-6)
    assert targets.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])


def test_cutmix_pastes_one_box_into_every_frame_and_weights_targets_by_area() -> None:
    torch.manual_seed(3)
    clips = torch.stack([torch.zeros(3, 3, 8, 8), torch.ones(3, 3, 8, 8)])
    mixed, targets = mix_clips(
        clips, torch.tensor([0, 1]), num_classes=2, mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0
    )
    pasted = mixed[0, :, 0]  # (T, H, W): 1 where clip 1 was pasted
    assert torch.equal(pasted[0], pasted[1]) and torch.equal(pasted[0], pasted[2])
    assert targets[0, 1].item() == pytest.approx(pasted[0].mean().item())
