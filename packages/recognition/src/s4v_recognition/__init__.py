"""s4v_recognition: Side4Video action recognition models, presets and checkpoint import."""

from s4v_recognition.model import VideoClassifier, build_model
from s4v_recognition.presets import METHODS, PRESETS, RecognitionPreset, get_preset

__all__ = [
    "METHODS",
    "PRESETS",
    "RecognitionPreset",
    "VideoClassifier",
    "build_model",
    "get_preset",
]
