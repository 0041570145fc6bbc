"""Classification losses and batch mixing (mixup / cutmix) for video clips.

Side4Video trains with label-smoothed cross-entropy (smoothing 0.1; spec 2.1). Mixup and cutmix
exist in the reference but are off in every config; they are available here as options. A mixed
batch is trained against soft targets, which already include the label smoothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def smoothed_targets(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """(N,) class ids -> (N, K) targets: ``1 - smoothing + smoothing / K`` on the true class."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of ``-sum_k targets_k * log softmax(logits)_k``."""
    return -(targets * logits.float().log_softmax(dim=-1)).sum(dim=-1).mean()


def classification_loss(logits: Tensor, targets: Tensor, smoothing: float) -> Tensor:
    """Cross-entropy against class ids (N,) with label smoothing, or against soft targets (N, K)."""
    if targets.ndim == 2:
        return soft_target_cross_entropy(logits, targets)
    return F.cross_entropy(logits.float(), targets, label_smoothing=smoothing)


def _cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """A random box covering about ``1 - lam`` of the frame: (top, bottom, left, right)."""
    ratio = math.sqrt(1.0 - lam)
    box_h, box_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(height, ()).item())
    cx = int(torch.randint(width, ()).item())
    top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
    left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
    return top, bottom, left, right


def mix_clips(
    clips: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float = 0.5,
    smoothing: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Mix each clip with the batch's reversed order: mixup (blend) or cutmix (paste a box).

    The same box or blend covers every frame of a clip. Randomness comes from torch's global
    generator (seeded by the training loop). With both alphas > 0, cutmix is chosen with
    probability ``switch_prob``.

    Args:
        clips: (B, T, 3, H, W).
        labels: (B,) class ids.

    Returns:
        mixed clips (B, T, 3, H, W) and soft targets (B, K).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix_clips needs mixup_alpha > 0 or cutmix_alpha > 0")
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(()).item() < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample().item())
    partner = clips.flip(0)
    if use_cutmix:
        top, bottom, left, right = _cutmix_box(clips.shape[-2], clips.shape[-1], lam)
        mixed = clips.clone()
        mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        # The pasted area decides the real mixing weight (the box is clipped at the borders).
        lam = 1.0 - (bottom - top) * (right - left) / (clips.shape[-2] * clips.shape[-1])
    else:
        mixed = clips * lam + partner * (1.0 - lam)
    targets = smoothed_targets(labels, num_classes, smoothing)
    return mixed, targets * lam + targets.flip(0) * (1.0 - lam)
