"""Classification losses and batch mixing (mixup / cutmix) for video clips.

Side4Video trains with label-smoothed cross-entropy (``smoothing: 0.1`` in every reference config,
``Recognition/configs/**``, read by ``Recognition/train_vision.py``). Mixup and cutmix
exist in the reference but are off in every config; they are available here as options. A mixed
batch is trained against soft targets, which already include the label smoothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2


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
    """Mix each clip with another of the batch: mixup (blend) or cutmix (paste a box).

    torchvision's ``transforms.v2.MixUp`` / ``CutMix`` do the mixing, on the batch as a video:
    the same blend or box covers every frame of a clip. Their maths is the reference's (timm's
    mixup as Side4Video's ``utils/mixup.py`` uses it: ``lam ~ Beta(alpha, alpha)``, a box of side
    ``sqrt(1 - lam)`` around a uniform centre, clipped at the borders, ``lam`` corrected to the
    pasted area; ``tests/recognition/test_losses.py`` checks it) except the partner: clip ``i``
    mixes with clip ``i - 1`` (the batch rolled by one) rather than with the reversed batch, so
    no clip of an odd batch is mixed with itself. Label smoothing is linear in the target, so
    smoothing the mixed one-hot targets equals mixing smoothed ones, as the reference does.
    Randomness comes from torch's global generator (seeded by the training loop). With both
    alphas > 0, cutmix is chosen with probability ``switch_prob``.

    Args:
        clips: (B, T, 3, H, W).
        labels: (B,) class ids.

    Returns:
        mixed clips (B, T, 3, H, W) and soft targets (B, K).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix_clips needs mixup_alpha > 0 or cutmix_alpha > 0")
    if mixup_alpha <= 0:
        mixer = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)
    elif cutmix_alpha <= 0:
        mixer = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)
    else:
        mixer = v2.RandomChoice(
            [
                v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes),
                v2.MixUp(alpha=mixup_alpha, num_classes=num_classes),
            ],
            p=[switch_prob, 1.0 - switch_prob],
        )
    mixed, targets = mixer(tv_tensors.Video(clips), labels)
    return mixed.as_subclass(Tensor), targets * (1.0 - smoothing) + smoothing / num_classes
