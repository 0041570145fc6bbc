"""Accuracy metrics and multi-view averaging against hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from s4v_recognition.metrics import (
    average_views,
    confusion_matrix,
    mean_class_accuracy,
    pair_accuracy,
    per_class_accuracy,
    rank_of_true_class,
    topk_accuracy,
)

# 4 samples, 3 classes; predictions (argmax) are 0, 2, 1, 2 and labels are 0, 1, 1, 2.
SCORES = torch.tensor(
    [
        [0.9, 0.05, 0.05],
        [0.1, 0.3, 0.6],
        [0.2, 0.7, 0.1],
        [0.3, 0.3, 0.4],
    ]
)
LABELS = torch.tensor([0, 1, 1, 2])


def test_topk_counts_the_true_class_within_the_first_k() -> None:
    acc = topk_accuracy(SCORES, LABELS, ks=(1, 2, 5))
    assert acc == pytest.approx({"top1": 75.0, "top2": 100.0, "top5": 100.0})


def test_identity_scores_give_perfect_accuracy() -> None:
    labels = torch.arange(10)
    assert topk_accuracy(torch.eye(10), labels) == {"top1": 100.0, "top5": 100.0}
    assert mean_class_accuracy(torch.eye(10), labels) == 100.0


def test_ties_rank_the_lower_class_index_first() -> None:
    scores = torch.zeros(3, 4)  # all tied
    labels = torch.tensor([0, 2, 3])
    assert rank_of_true_class(scores, labels).tolist() == [0, 2, 3]
    assert topk_accuracy(scores, labels, ks=(1, 3)) == pytest.approx(
        {"top1": 100 / 3, "top3": 200 / 3}
    )


def test_confusion_matrix_rows_are_true_columns_predicted() -> None:
    cm = confusion_matrix(SCORES, LABELS)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert cm.dtype == torch.int64


def test_per_class_and_mean_class_accuracy() -> None:
    per_class = per_class_accuracy(SCORES, LABELS)
    assert per_class.tolist() == pytest.approx([100.0, 50.0, 100.0])
    assert mean_class_accuracy(SCORES, LABELS) == pytest.approx(250 / 3)


def test_class_without_samples_is_nan_and_left_out_of_the_mean() -> None:
    per_class = per_class_accuracy(SCORES, LABELS, num_classes=4)
    assert math.isnan(per_class[3].item())
    assert mean_class_accuracy(SCORES, LABELS, num_classes=4) == pytest.approx(250 / 3)


def test_mean_class_differs_from_top1_on_imbalanced_classes() -> None:
    scores = torch.tensor([[1.0, 0.0]] * 4)  # always predicts class 0
    labels = torch.tensor([0, 0, 0, 1])
    assert topk_accuracy(scores, labels, ks=(1,))["top1"] == 75.0
    assert mean_class_accuracy(scores, labels) == 50.0


def test_average_views_is_the_mean_of_per_view_softmax() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])  # (B=1, V=2, K=2)
    probs = average_views(logits)
    p0 = math.exp(2) / (math.exp(2) + 1)
    assert probs.shape == (1, 2)
    assert probs[0].tolist() == pytest.approx([(p0 + 0.5) / 2, (1 - p0 + 0.5) / 2])
    # Not the softmax of the averaged logits.
    assert not torch.allclose(probs, logits.mean(dim=1).softmax(-1))


def test_single_view_average_equals_softmax() -> None:
    logits = torch.randn(5, 1, 7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(average_views(logits), logits[:, 0].softmax(-1))


def test_bad_shapes_fail_with_the_shape_in_the_message() -> None:
    with pytest.raises(ValueError, match=r"\(B, V, K\)"):
        average_views(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="labels must be"):
        topk_accuracy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


def test_pair_accuracy_compares_each_class_with_its_partner_only() -> None:
    # class 2 has no partner; sample 0 beats its partner, sample 1 loses, sample 3 ties (wrong).
    scores = torch.tensor(
        [
            [0.1, 0.0, 0.9],
            [0.6, 0.4, 0.0],
            [0.0, 0.0, 1.0],
            [0.5, 0.5, 0.0],
        ]
    )
    labels = torch.tensor([0, 1, 2, 0])
    assert pair_accuracy(scores, labels, [(0, 1)]) == pytest.approx(100 / 3)
    assert math.isnan(pair_accuracy(scores, labels[2:3].repeat(4), [(0, 1)]))
