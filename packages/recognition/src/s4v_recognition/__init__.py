"""s4v_recognition: Side4Video action recognition models, presets and checkpoint import."""

from s4v_recognition.checkpoints import (
    build_saved_model,
    convert_side4video_checkpoint,
    load_converted_checkpoint,
    load_side4video_checkpoint,
)
from s4v_recognition.config import RecognitionMethod, RecognitionPreset
from s4v_recognition.model import VideoClassifier, build_model, count_parameters
from s4v_recognition.presets import METHODS, PRESETS, get_method, get_preset
from s4v_recognition.releases import REFERENCE_KEYS

__all__ = [
    "METHODS",
    "PRESETS",
    "REFERENCE_KEYS",
    "RecognitionMethod",
    "RecognitionPreset",
    "VideoClassifier",
    "build_model",
    "build_saved_model",
    "convert_side4video_checkpoint",
    "count_parameters",
    "get_method",
    "get_preset",
    "load_converted_checkpoint",
    "load_side4video_checkpoint",
]
