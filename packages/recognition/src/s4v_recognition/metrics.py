"""Classification metrics and multi-view averaging, as pure functions of tensors.

Accuracies are percentages (0-100), like the numbers reported in the Side4Video paper. Every
function accepts any per-class *scores* whose ranking decides the prediction: logits, softmax
probabilities or view-averaged probabilities all give the same answer.

Ties rule: when several classes have the same score, the class with the lower index ranks first
(as ``torch.argmax`` does), so a prediction is never counted correct because of a tie it merely
shares with the true class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _check(scores: Tensor, labels: Tensor) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, K), got shape {tuple(scores.shape)}")
    if labels.shape != (scores.shape[0],):
        raise ValueError(
            f"labels must be (N,) with N={scores.shape[0]}, got shape {tuple(labels.shape)}"
        )


def rank_of_true_class(scores: Tensor, labels: Tensor) -> Tensor:
    """0-based rank of each sample's true class among all classes, ties broken by lower index.

    Args:
        scores: (N, K) class scores.
        labels: (N,) true class ids.

    Returns:
        (N,) int64 ranks; rank 0 means the true class is the top prediction.
    """
    _check(scores, labels)
    true_score = scores.gather(1, labels[:, None])  # (N, 1)
    class_ids = torch.arange(scores.shape[1], device=scores.device)[None, :]  # (1, K)
    ahead = (scores > true_score) | ((scores == true_score) & (class_ids < labels[:, None]))
    return ahead.sum(dim=1)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent for every k, keyed ``top1``, ``top5``, ...

    With fewer than k classes every sample counts as correct at k.
    """
    ranks = rank_of_true_class(scores, labels)
    return {f"top{k}": (ranks < k).double().mean().item() * 100.0 for k in ks}


def confusion_matrix(scores: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """(K, K) int64 counts: row = true class, column = predicted class (the top-1 prediction)."""
    _check(scores, labels)
    k = num_classes if num_classes is not None else scores.shape[1]
    predicted = scores.argmax(dim=1)
    flat = labels.long() * k + predicted
    return torch.bincount(flat.cpu(), minlength=k * k).reshape(k, k)


def per_class_accuracy(scores: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """(K,) float64 top-1 accuracy in percent per true class; NaN for a class with no sample."""
    counts = confusion_matrix(scores, labels, num_classes).double()
    support = counts.sum(dim=1)
    correct = counts.diagonal()
    return torch.where(support > 0, correct / support.clamp(min=1) * 100.0, torch.nan)


def mean_class_accuracy(scores: Tensor, labels: Tensor, num_classes: int | None = None) -> float:
    """Mean of the per-class top-1 accuracies (percent) over the classes that have samples."""
    return per_class_accuracy(scores, labels, num_classes).nanmean().item()


def average_views(logits: Tensor) -> Tensor:
    """Multi-view test: softmax per view, then the mean of the probabilities over views.

    Args:
        logits: (B, V, K) logits of V views (crops x clips) of each video.

    Returns:
        (B, K) averaged class probabilities.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be (B, V, K), got shape {tuple(logits.shape)}")
    return logits.float().softmax(dim=-1).mean(dim=1)


def pair_accuracy(scores: Tensor, labels: Tensor, pairs: Sequence[tuple[int, int]]) -> float:
    """Accuracy (percent) of telling each class from its partner in ``pairs``; chance is 50.

    For every sample whose class belongs to a pair (e.g. a motion and the same motion played
    backwards), the sample counts as correct when its true class scores higher than the partner
    (ties count as wrong). Samples of other classes are ignored; NaN when no sample is in a pair.
    """
    _check(scores, labels)
    partner = torch.full((scores.shape[1],), -1, dtype=torch.long)
    for a, b in pairs:
        partner[a], partner[b] = b, a
    partner = partner.to(labels.device)[labels]  # (N,)
    keep = partner >= 0
    if not keep.any():
        return float("nan")
    true_score = scores[keep].gather(1, labels[keep, None])[:, 0]
    partner_score = scores[keep].gather(1, partner[keep, None])[:, 0]
    return (true_score > partner_score).double().mean().item() * 100.0
