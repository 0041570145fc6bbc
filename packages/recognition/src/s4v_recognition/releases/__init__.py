"""Key layouts of the reference's released recognition checkpoints.

:mod:`~s4v_recognition.releases.clip` (CLIP ViT-B/32, B/16, L/14 presets) and
:mod:`~s4v_recognition.releases.eva` (EVA-CLIP presets such as ``side4video-e14``); the reference
EVA ViT's own names are shared with retrieval in :mod:`s4v_core.eva_reference`.
:func:`s4v_recognition.load_side4video_checkpoint` picks the layout from the preset.
"""

from s4v_recognition.releases.clip import (
    REFERENCE_KEYS,
    convert_reference_state,
    reference_key_map,
)
from s4v_recognition.releases.eva import convert_eva_release, load_eva_release

__all__ = [
    "REFERENCE_KEYS",
    "convert_eva_release",
    "convert_reference_state",
    "load_eva_release",
    "reference_key_map",
]
