"""Label smoothing, soft-target cross-entropy and mixup/cutmix against known answers."""

from __future__ import annotations

import math

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


# The reference's mixing maths (timm's Mixup in batch mode, spec: Side4Video utils/mixup.py), written
# out here with the partner as a parameter: the reference pairs clip i with the reversed batch's.


def _reference_targets(labels, partner, lam, num_classes, smoothing):
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    one_hot = F.one_hot(labels, num_classes).float() * (on - off) + off
    return one_hot * lam + one_hot[partner] * (1.0 - lam)


def _reference_cutmix(clips, labels, partner, lam, cx, cy, num_classes, smoothing):
    height, width = clips.shape[-2:]
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = clips.clone()
    mixed[..., y1:y2, x1:x2] = clips[partner][..., y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)  # corrected to the pasted area
    return mixed, _reference_targets(labels, partner, lam, num_classes, smoothing)


def _draws(seed: int, alpha: float, size: tuple[int, int] | None = None):
    """The random numbers torchvision's MixUp/CutMix draw after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    beta = torch.distributions.Beta(torch.tensor([alpha]), torch.tensor([alpha]))
    lam = float(beta.sample(()))
    if size is None:
        return lam
    height, width = size
    cx, cy = int(torch.randint(width, (1,))), int(torch.randint(height, (1,)))
    return lam, cx, cy


CLIPS = torch.rand(3, 2, 3, 16, 12, generator=torch.Generator().manual_seed(1))  # (B, T, C, H, W)
LABELS = torch.tensor([0, 3, 1])
ROLLED, REVERSED = torch.tensor([2, 0, 1]), torch.tensor([2, 1, 0])


@pytest.mark.parametrize("seed", [0, 5, 11])
def test_torchvision_mixup_is_the_reference_maths_with_the_batch_rolled(seed) -> None:
    torch.manual_seed(seed)
    mixed, targets = mix_clips(CLIPS, LABELS, num_classes=4, mixup_alpha=0.8, cutmix_alpha=0.0)
    lam = _draws(seed, 0.8)
    assert torch.allclose(mixed, CLIPS * lam + CLIPS[ROLLED] * (1.0 - lam), atol=1e-6)
    assert torch.allclose(targets, _reference_targets(LABELS, ROLLED, lam, 4, 0.1), atol=1e-6)
    assert targets.sum(dim=1).tolist() == pytest.approx([1.0] * 3)
    # The one difference: the reference's partner is the reversed batch (clip 1 of 3 with itself).
    assert not torch.allclose(mixed, CLIPS * lam + CLIPS[REVERSED] * (1.0 - lam), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 3, 8, 21])
def test_torchvision_cutmix_is_the_reference_maths_with_the_batch_rolled(seed) -> None:
    torch.manual_seed(seed)
    mixed, targets = mix_clips(CLIPS, LABELS, num_classes=4, mixup_alpha=0.0, cutmix_alpha=1.0)
    lam, cx, cy = _draws(seed, 1.0, size=(16, 12))
    expected, expected_targets = _reference_cutmix(CLIPS, LABELS, ROLLED, lam, cx, cy, 4, 0.1)
    assert torch.equal(mixed, expected)  # the same box in every frame, clipped at the borders
    assert torch.allclose(targets, expected_targets, atol=1e-6)


def test_switch_prob_picks_cutmix_or_mixup() -> None:
    clips = torch.stack([torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)])
    labels = torch.tensor([0, 1])
    for seed in range(4):
        torch.manual_seed(seed)
        cut, _ = mix_clips(clips, labels, num_classes=2, mixup_alpha=0.8, cutmix_alpha=1.0,
                           switch_prob=1.0)  # fmt: skip
        assert set(cut.unique().tolist()) <= {0.0, 1.0}  # pasted, never blended
        torch.manual_seed(seed)
        blend, _ = mix_clips(clips, labels, num_classes=2, mixup_alpha=0.8, cutmix_alpha=1.0,
                             switch_prob=0.0)  # fmt: skip
        assert blend[0].unique().numel() == 1 and 0.0 < blend[0, 0, 0, 0, 0] < 1.0


def test_mixing_needs_an_alpha() -> None:
    with pytest.raises(ValueError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
        mix_clips(CLIPS, LABELS, num_classes=4, mixup_alpha=0.0, cutmix_alpha=0.0)
