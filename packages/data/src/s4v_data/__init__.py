"""s4v_data: annotation lists, decoding, frame sampling, augmentation and clip datasets.

The stages are separate functions (parse list -> sample indices -> decode -> transform -> collate)
and :class:`VideoClipDataset` chains them. ``s4v_data.synthetic`` generates the project's own
motion-defined video dataset, ``s4v_data.extract`` turns videos into frame folders,
``s4v_data.check`` validates a dataset, ``s4v_data.dataset_file`` reads a user's ``dataset.yaml``,
``s4v_data.prepare`` makes one from a folder of class folders, and ``s4v_data.public`` reads the
official split files of UCF101, HMDB51 and Kinetics.

Names are imported on first use (PEP 562), so that list handling, extraction and checking start
without importing torch and torchvision (seconds on a busy machine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from s4v_data.annotations import (
        AnnotationError,
        VideoRecord,
        check_labels,
        read_labels,
        read_list,
        read_rawframe_list,
        read_video_list,
        write_labels,
        write_rawframe_list,
        write_video_list,
    )
    from s4v_data.dataset import SkipBadSamples, VideoClipDataset, collate_clips, make_loader
    from s4v_data.decode import (
        DecodeError,
        IsolatedVideoReader,
        decode_rawframes,
        decode_video,
        default_backend,
        open_reader,
    )
    from s4v_data.files import (
        DataError,
        DataFiles,
        DataNotFoundError,
        check_data_files,
        data_files,
        read_official,
    )
    from s4v_data.loader import SignalSafeLoader
    from s4v_data.order import SeededItems, ShardSampler, evaluation_shard, training_order
    from s4v_data.retrieval import (
        CaptionedVideos,
        read_msrvtt,
        read_msvd,
        read_synthetic,
        read_vatex,
    )
    from s4v_data.retrieval_dataset import RetrievalVideos, VideoTextPairs
    from s4v_data.sampling import ClipPlan, sample_indices
    from s4v_data.specs import (
        DATASETS,
        RETRIEVAL_LAYOUTS,
        TASK_DATASETS,
        DatasetSpec,
        RetrievalLayout,
    )
    from s4v_data.transforms import CLIP_MEAN, CLIP_STD, ClipTransform

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DATASETS",
    "RETRIEVAL_LAYOUTS",
    "TASK_DATASETS",
    "AnnotationError",
    "CaptionedVideos",
    "ClipPlan",
    "ClipTransform",
    "DataError",
    "DataFiles",
    "DataNotFoundError",
    "DatasetSpec",
    "DecodeError",
    "IsolatedVideoReader",
    "RetrievalLayout",
    "RetrievalVideos",
    "SeededItems",
    "ShardSampler",
    "SignalSafeLoader",
    "SkipBadSamples",
    "VideoClipDataset",
    "VideoRecord",
    "VideoTextPairs",
    "check_data_files",
    "check_labels",
    "collate_clips",
    "data_files",
    "decode_rawframes",
    "decode_video",
    "default_backend",
    "evaluation_shard",
    "make_loader",
    "open_reader",
    "read_labels",
    "read_list",
    "read_msrvtt",
    "read_msvd",
    "read_official",
    "read_rawframe_list",
    "read_synthetic",
    "read_vatex",
    "read_video_list",
    "sample_indices",
    "training_order",
    "write_labels",
    "write_rawframe_list",
    "write_video_list",
]

# where each public name lives (imported on first access)
_WHERE = {
    "AnnotationError": "annotations",
    "VideoRecord": "annotations",
    "check_labels": "annotations",
    "read_labels": "annotations",
    "read_list": "annotations",
    "read_rawframe_list": "annotations",
    "read_video_list": "annotations",
    "write_labels": "annotations",
    "write_rawframe_list": "annotations",
    "write_video_list": "annotations",
    "SignalSafeLoader": "loader",
    "SkipBadSamples": "dataset",
    "VideoClipDataset": "dataset",
    "collate_clips": "dataset",
    "make_loader": "dataset",
    "DecodeError": "decode",
    "IsolatedVideoReader": "decode",
    "decode_rawframes": "decode",
    "decode_video": "decode",
    "default_backend": "decode",
    "open_reader": "decode",
    "DataError": "files",
    "DataFiles": "files",
    "DataNotFoundError": "files",
    "check_data_files": "files",
    "data_files": "files",
    "read_official": "files",
    "SeededItems": "order",
    "ShardSampler": "order",
    "evaluation_shard": "order",
    "training_order": "order",
    "CaptionedVideos": "retrieval",
    "read_msrvtt": "retrieval",
    "read_msvd": "retrieval",
    "read_synthetic": "retrieval",
    "read_vatex": "retrieval",
    "RetrievalVideos": "retrieval_dataset",
    "VideoTextPairs": "retrieval_dataset",
    "ClipPlan": "sampling",
    "sample_indices": "sampling",
    "DATASETS": "specs",
    "RETRIEVAL_LAYOUTS": "specs",
    "TASK_DATASETS": "specs",
    "RetrievalLayout": "specs",
    "DatasetSpec": "specs",
    "CLIP_MEAN": "transforms",
    "CLIP_STD": "transforms",
    "ClipTransform": "transforms",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 's4v_data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"s4v_data.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
