"""s4v_data: annotation lists, decoding, frame sampling, augmentation and clip datasets.

The stages are separate functions (parse list -> sample indices -> decode -> transform -> collate)
and :class:`VideoClipDataset` chains them. ``s4v_data.synthetic`` generates the project's own
motion-defined video dataset.
"""

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
from s4v_data.decode import DecodeError, IsolatedVideoReader, decode_rawframes, decode_video
from s4v_data.retrieval import (
    RETRIEVAL_LAYOUTS,
    CaptionedVideos,
    RetrievalLayout,
    read_msrvtt,
    read_msvd,
    read_synthetic,
    read_vatex,
)
from s4v_data.retrieval_dataset import RetrievalVideos, VideoTextPairs
from s4v_data.sampling import ClipPlan, sample_indices
from s4v_data.specs import DATASETS, DatasetSpec
from s4v_data.transforms import CLIP_MEAN, CLIP_STD, ClipTransform

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DATASETS",
    "RETRIEVAL_LAYOUTS",
    "AnnotationError",
    "CaptionedVideos",
    "ClipPlan",
    "ClipTransform",
    "DatasetSpec",
    "DecodeError",
    "IsolatedVideoReader",
    "RetrievalLayout",
    "RetrievalVideos",
    "SkipBadSamples",
    "VideoClipDataset",
    "VideoRecord",
    "VideoTextPairs",
    "check_labels",
    "collate_clips",
    "decode_rawframes",
    "decode_video",
    "make_loader",
    "read_labels",
    "read_list",
    "read_msrvtt",
    "read_msvd",
    "read_rawframe_list",
    "read_synthetic",
    "read_vatex",
    "read_video_list",
    "sample_indices",
    "write_labels",
    "write_rawframe_list",
    "write_video_list",
]
