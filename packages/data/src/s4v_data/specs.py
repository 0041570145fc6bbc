"""The dataset registry: every dataset s4v knows, by task, with its on-disk conventions.

This module is the one place a dataset name is defined. :data:`DATASETS` holds the recognition
datasets (frame names, sampling family, resize policy, flip rules, file names); the values for
Something-Something and Kinetics follow the Side4Video reference pipeline
(github.com/HJYao00/Side4Video @ 5d72352, ``Recognition/datasets/{sth,kinetics}.py``,
``Recognition/utils/Augmentation.py``); UCF101 and HMDB51 take Kinetics' conventions and read their
official split files (:mod:`s4v_data.public`). A user's own dataset needs no entry here: a
``dataset.yaml`` (:mod:`s4v_data.dataset_file`) describes it and borrows the conventions of ``k400``
or ``ssv2``.
:data:`RETRIEVAL_LAYOUTS` holds the retrieval datasets (CLIP4Clip annotation layouts, read by
``Retrieval/dataloaders/dataloader_{msrvtt,msvd,vatex}_retrieval.py``).
``synthetic`` is the project's own generated dataset (``s4v_data.synthetic``) in both.
:data:`TASK_DATASETS` maps a task to its registry; orchestration's run recipes attach to these
names and check at import that they name no other.

Add a dataset by appending one entry to the task's tuple below; the key is the entry's ``name``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from s4v_data.public import SplitRecords, read_hmdb51, read_kinetics, read_ucf101
from s4v_data.retrieval import (
    CaptionedVideos,
    SamplingName,
    Split,
    read_msrvtt,
    read_msvd,
    read_synthetic,
    read_vatex,
)

__all__ = ["DATASETS", "RETRIEVAL_LAYOUTS", "TASK_DATASETS", "DatasetSpec", "RetrievalLayout"]

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
    sampling: (
        SamplingFamily  # which frame-sampling formulas (reference datasets/sth.py, kinetics.py)
    )
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
    # Reads the dataset's own split files, (root, split, split number) -> records and class
    # names; used for videos when no list is given (s4v_data.public).
    official: Callable[[Path, str, int], SplitRecords] | None = None

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


class _Named(Protocol):
    name: str


_Entry = TypeVar("_Entry", bound=_Named)


def _by_name(entries: Iterable[_Entry]) -> dict[str, _Entry]:
    """A registry keyed by each entry's ``name``; a repeated name is a programming error."""
    registry: dict[str, _Entry] = {}
    for entry in entries:
        if entry.name in registry:
            raise ValueError(f"dataset {entry.name!r} is registered twice")
        registry[entry.name] = entry
    return registry


DATASETS: dict[str, DatasetSpec] = _by_name(
    (
        DatasetSpec(
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
        DatasetSpec(
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
        DatasetSpec(
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
            official=read_kinetics,
        ),
        # The small public sets, read from their official split files (s4v_data.public), with
        # Kinetics' appearance-style conventions.
        DatasetSpec(
            name="ucf101",
            num_classes=101,
            frame_template="img_{:05d}.jpg",
            sampling="kinetics",
            resize="short-side",
            resize_size=(256, 256),
            flip="plain",
            grayscale_p=0.2,
            official=read_ucf101,
        ),
        DatasetSpec(
            name="hmdb51",
            num_classes=51,
            frame_template="img_{:05d}.jpg",
            sampling="kinetics",
            resize="short-side",
            resize_size=(256, 256),
            flip="plain",
            grayscale_p=0.2,
            official=read_hmdb51,
        ),
        # The generated dataset: 8 motion classes in time-reversed pairs; a horizontal flip turns
        # left-to-right into right-to-left and clockwise into anticlockwise, so those labels swap.
        # A milder crop keeps the small moving object in view.
        DatasetSpec(
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
    )
)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetrievalLayout:
    """Where a retrieval dataset keeps its annotations and frames, and how its test set samples."""

    name: str
    read: Callable[[Path, Split], CaptionedVideos]  # (annotation root, split) -> captioned videos
    # Frame folder / video file of a video relative to the media root; {split} and {video_id}.
    frame_dir: str
    video_file: str
    frame_template: str  # file name of frame i (1-based), e.g. img_00001.jpg
    test_sampling: (
        SamplingName  # frame sampling at validation and test (reference rawframes_util.py)
    )


RETRIEVAL_LAYOUTS: dict[str, RetrievalLayout] = _by_name(
    (
        RetrievalLayout(
            name="msrvtt",
            read=read_msrvtt,
            frame_dir="{video_id}",
            video_file="{video_id}.mp4",
            frame_template="img_{:05d}.jpg",
            test_sampling="uniform-stride",
        ),
        RetrievalLayout(
            name="msvd",
            read=read_msvd,
            frame_dir="{video_id}",
            video_file="{video_id}.avi",
            frame_template="img_{:05d}.jpg",
            test_sampling="uniform-stride",
        ),
        RetrievalLayout(
            name="vatex",
            read=read_vatex,
            frame_dir="{split}_video/{video_id}",
            video_file="{split}_video/{video_id}.mp4",
            frame_template="img_{:05d}.jpg",
            test_sampling="segment-centre",
        ),
        RetrievalLayout(
            name="synthetic",
            read=read_synthetic,
            frame_dir="rawframes/{video_id}",
            video_file="videos/{video_id}.mp4",
            frame_template="img_{:05d}.jpg",
            test_sampling="uniform-stride",
        ),
    )
)

# Task -> its dataset registry (the task names are s4v_orchestration's).
TASK_DATASETS: dict[str, dict[str, DatasetSpec] | dict[str, RetrievalLayout]] = {
    "recognition": DATASETS,
    "retrieval": RETRIEVAL_LAYOUTS,
}
