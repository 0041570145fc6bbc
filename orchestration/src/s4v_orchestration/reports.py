"""Evaluation reports on disk: metrics JSON, per-class accuracy CSV and a confusion-matrix PNG."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from s4v_recognition.metrics import confusion_matrix, per_class_accuracy

# Above this many classes the axes get no class names (they would be unreadable).
MAX_LABELLED_CLASSES = 40


def write_recognition_report(
    out_dir: Path,
    *,
    scores: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    metrics: dict[str, float],
    views: str,
) -> list[Path]:
    """Write ``eval.json``, ``per_class.csv`` and ``confusion.png`` into ``out_dir``.

    Args:
        scores: (N, K) class scores (view-averaged probabilities or logits).
        labels: (N,) true class ids.
        class_names: K names, in class-id order.
        metrics: the summary metrics to store in the JSON.
        views: the test views, "CROPSxCLIPS".

    Returns:
        The written paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_classes = len(class_names)
    counts = confusion_matrix(scores, labels, num_classes)
    per_class = per_class_accuracy(scores, labels, num_classes)

    summary = out_dir / "eval.json"
    summary.write_text(
        json.dumps(
            {
                "views": views,
                "num_videos": int(labels.shape[0]),
                "num_classes": num_classes,
                "metrics": {k: (None if math.isnan(v) else v) for k, v in metrics.items()},
            },
            indent=2,
        )
    )

    table = out_dir / "per_class.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class_id", "class_name", "videos", "top1"])
        for k, name in enumerate(class_names):
            accuracy = per_class[k].item()
            support = int(counts[k].sum())
            writer.writerow([k, name, support, "" if math.isnan(accuracy) else f"{accuracy:.2f}"])

    image = out_dir / "confusion.png"
    _plot_confusion(
        counts, class_names, image, title=f"top-1 {metrics.get('top1', 0):.1f} % ({views} views)"
    )
    return [summary, table, image]


def _plot_confusion(
    counts: torch.Tensor, class_names: Sequence[str], path: Path, title: str
) -> None:
    """Row-normalised confusion matrix (each true class sums to 1)."""
    rows = counts.double()
    normalised = (rows / rows.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    k = len(class_names)
    side = min(4 + 0.35 * min(k, MAX_LABELLED_CLASSES), 20)
    figure = Figure(figsize=(side + 1.5, side))
    axes = figure.add_subplot()
    shown = axes.imshow(normalised, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    if k <= MAX_LABELLED_CLASSES:
        axes.set_xticks(range(k), class_names, rotation=60, ha="right", fontsize=8)
        axes.set_yticks(range(k), class_names, fontsize=8)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if counts[i, j]:
                        colour = "black" if normalised[i, j] > 0.5 else "white"
                        axes.text(
                            j,
                            i,
                            int(counts[i, j]),
                            ha="center",
                            va="center",
                            color=colour,
                            fontsize=8,
                        )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
