"""What a recognition preset and a recognition method state (the registry's entry types).

:mod:`s4v_recognition.presets` holds the named entries, :mod:`s4v_recognition.encoders` the
builders they name; both import these types, so neither imports the other's module back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

# An encoder with its ``out_dim`` and the ``{"name", "pretrained", "sha256"}`` of its CLIP weights.
Built = tuple[nn.Module, dict]


@dataclass(frozen=True, kw_only=True, slots=True)
class RecognitionPreset:
    """Everything :func:`s4v_recognition.build_model` needs besides the number of classes."""

    backbone: str  # open_clip model name
    # The weights the reference starts from (open_clip tag); loaded only when asked for.
    pretrained: str | None
    num_frames: int  # T, frames per clip
    side_dim: int  # C, side network width
    image_size: int  # input resolution; must match the backbone's
    head_dim: int = 64  # side attention head width (reference: heads = C // 64)
    # Backbone layers (0-based) followed by a side block: a tuple, "odd" (1, 3, ...: the
    # reference's EVA placement) or None for every layer (the reference's CLIP placement).
    side_layers: tuple[int, ...] | Literal["odd"] | None = None
    # Dtype the frozen backbone's weights are stored and run in ("bf16": half the bytes; frozen
    # weights need no fp32 master copy). None keeps fp32.
    backbone_dtype: Literal["bf16"] | None = None
    # Recompute side blocks in backward by default (the reference always does on EVA).
    grad_checkpointing: bool = False
    dropout: float = 0.0  # before the linear head (reference drop_fc: 0)
    description: str = ""
    # The backbone's first N layers only, random weights (side4video; the memory plan's
    # depth-reduced builds, s4v_recognition.bench.memory_plan). None: the backbone's depth.
    backbone_layers: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RecognitionMethod:
    """How one method turns a preset into a video encoder; a linear head goes on top."""

    # (resolved preset, pretrained weights, grad_checkpointing) -> (encoder, backbone identity)
    build: Callable[[RecognitionPreset, str | None, bool], Built]
    trains: str  # what trains, for `s4v models`
