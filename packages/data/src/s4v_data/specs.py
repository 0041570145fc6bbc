"""Per-dataset conventions: frame names, sampling family, resize policy, flip rules, file names.

The values for Something-Something and Kinetics follow the Side4Video reference pipeline (spec
section 3); ``synthetic`` describes the project's own generated dataset (``s4v_data.synthetic``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DATASETS", "DatasetSpec"]

SamplingFamily = Literal["sth", "kinetics"]
FlipMode = Literal["swap-labels", "plain", "none"]
ResizeMode = Literal["exact", "short-side"]

REFERENCE_INPUT = 224  # the input size the resize sizes below are stated for


@dataclass(frozen=True, kw_only=True, slots=True)
class DatasetSpec:
    """How one dataset is stored on disk and how its clips are sampled and augmented."""

    name: str
    num_classes: int
    frame_template: str  # file name of frame i (1-based), e.g. "{:05d}.jpg"
    sampling: SamplingFamily  # which frame-sampling formulas (spec 3.2)
    resize: ResizeMode  # "exact": squash to (h, w); "short-side": shorter side to h, keep aspect
    resize_size: tuple[int, int]  # (h, w) for "exact", (s, s) for "short-side"; stated at 224 input
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area range of the Inception-style random crop
    flip: FlipMode = "plain"
    # Class pairs whose labels swap under a horizontal flip ("swap-labels" only).
    flip_pairs: tuple[tuple[int, int], ...] = ()
    grayscale_p: float = 0.0  # probability of converting a training clip to grayscale
    rand_augment: bool = False  # the reference's default for this dataset
    # Default file names, relative to the data root; list entries are relative to that root too.
    label_file: str = "labels.csv"
    train_list: str = "train_rawframes.txt"
    val_list: str = "val_rawframes.txt"
    train_video_list: str = "train_videos.txt"
    val_video_list: str = "val_videos.txt"

    def __post_init__(self) -> None:
        if self.flip != "swap-labels" and self.flip_pairs:
            raise ValueError(f"{self.name}: flip_pairs only make sense with flip='swap-labels'")
        for a, b in self.flip_pairs:
            if not (0 <= a < self.num_classes and 0 <= b < self.num_classes) or a == b:
                raise ValueError(f"{self.name}: flip pair ({a}, {b}) is not two distinct classes")

    def resize_for(self, input_size: int) -> tuple[int, int]:
        """The resize size for a given crop size, scaled from the 224-pixel reference.

        Returns (h, w) for ``resize == "exact"`` and (s, s) for ``"short-side"``.
        """
        h, w = self.resize_size
        f = input_size / REFERENCE_INPUT
        return round(h * f), round(w * f)

    def flip_label_map(self) -> dict[int, int]:
        """Label -> label after a horizontal flip (only the swapped classes appear)."""
        mapping = {}
        for a, b in self.flip_pairs:
            mapping[a], mapping[b] = b, a
        return mapping


# Something-Something's left/right classes in the order of sth_labels.csv (same for v1 and v2):
# 86/87 "Pulling something from left to right / right to left", 93/94 "Pushing something from
# left to right / right to left", 166/167 "Turning the camera left / right while filming something".
STH_FLIP_PAIRS = ((86, 87), (93, 94), (166, 167))

DATASETS: dict[str, DatasetSpec] = {
    "ssv1": DatasetSpec(
        name="ssv1",
        num_classes=174,
        frame_template="{:05d}.jpg",
        sampling="sth",
        resize="exact",
        resize_size=(256, 320),
        flip="swap-labels",
        flip_pairs=STH_FLIP_PAIRS,
        rand_augment=True,
        label_file="sth_labels.csv",
    ),
    "ssv2": DatasetSpec(
        name="ssv2",
        num_classes=174,
        frame_template="{:06d}.jpg",
        sampling="sth",
        resize="exact",
        resize_size=(256, 320),
        flip="swap-labels",
        flip_pairs=STH_FLIP_PAIRS,
        rand_augment=True,
        label_file="sth_labels.csv",
    ),
    "k400": DatasetSpec(
        name="k400",
        num_classes=400,
        frame_template="img_{:05d}.jpg",
        sampling="kinetics",
        resize="short-side",
        resize_size=(256, 256),
        flip="plain",
        grayscale_p=0.2,
        rand_augment=False,
        label_file="kinetics_400_labels.csv",
    ),
    # The generated dataset: 8 motion classes in time-reversed pairs; a horizontal flip turns
    # left-to-right into right-to-left and clockwise into anticlockwise, so those labels swap.
    # A milder crop keeps the small moving object in view.
    "synthetic": DatasetSpec(
        name="synthetic",
        num_classes=8,
        frame_template="img_{:05d}.jpg",
        sampling="sth",
        resize="short-side",
        resize_size=(256, 256),
        crop_scale=(0.5, 1.0),
        flip="swap-labels",
        flip_pairs=((0, 1), (4, 5)),
    ),
}
