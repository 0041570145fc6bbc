"""Video classifiers: a method's video encoder, dropout and a linear head.

The encoders (Side4Video and the methods it is compared with) are built by
:mod:`s4v_recognition.encoders`; :func:`build_model` looks the preset and the method up in the
registry (:mod:`s4v_recognition.presets`) and :func:`count_parameters` counts what it would build.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from s4v_core.assembly import TrainableModule, count_on_meta, log_built, with_overrides
from s4v_recognition.config import RecognitionPreset
from s4v_recognition.presets import get_method, get_preset


class VideoClassifier(TrainableModule):
    """A video encoder, dropout and a linear head: frames ``(B, T, 3, H, W)`` -> logits ``(B, K)``.

    Frames are CLIP-normalised floats. Only :meth:`trainable_state_dict` needs saving: the frozen
    backbone is rebuilt from :attr:`backbone_identity`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        *,
        method: str,
        preset: RecognitionPreset,
        backbone_identity: dict,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.out_dim, num_classes)
        self.method = method
        self.preset = preset
        self.num_classes = num_classes
        self._backbone_identity = dict(backbone_identity)

    @property
    def backbone_identity(self) -> dict:
        """``{"name", "pretrained", "sha256"}`` of the CLIP weights the encoder started from."""
        return dict(self._backbone_identity)

    def set_backbone_identity(self, identity: dict) -> None:
        """Record where the backbone's weights came from when they are loaded after building."""
        self._backbone_identity = dict(identity)

    @property
    def num_frames(self) -> int:
        return self.preset.num_frames

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` for frames ``(B, T, 3, H, W)``."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"expected frames (B, T, 3, H, W), got {tuple(frames.shape)}")
        return self.head(self.dropout(self.encoder(frames)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward (side blocks; all blocks for full fine-tuning)."""
        self.encoder.set_grad_checkpointing(enable)


def build_model(
    preset: str,
    num_classes: int,
    *,
    method: str = "side4video",
    pretrained: str | None = None,
    num_frames: int | None = None,
    side_dim: int | None = None,
    grad_checkpointing: bool = False,
    dropout: float | None = None,
    side_layers: Sequence[int] | str | None = None,
    backbone_layers: int | None = None,
) -> VideoClassifier:
    """Build a video classifier from a named preset.

    Args:
        preset: a key of :data:`s4v_recognition.PRESETS`.
        num_classes: K, the number of classes.
        method: a key of :data:`s4v_recognition.METHODS` (``side4video``, ``linear-probe``, ...).
        pretrained: CLIP weights: an open_clip tag (the preset's is ``preset.pretrained``), a local
            file, or None for random weights.
        num_frames: override the preset's frames per clip.
        side_dim: override the preset's side width C.
        grad_checkpointing: recompute activations in backward to save memory.
        dropout: override the preset's dropout before the head.
        side_layers: override the preset's side layers: layer indices, ``"odd"`` or ``"all"``.
        backbone_layers: build the backbone with this many layers, random weights (``side4video``
            only: the memory plan's depth-reduced copies of a model too large to build).
    """
    spec = get_preset(preset)
    builder = get_method(method)
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if backbone_layers is not None and (method != "side4video" or pretrained is not None):
        raise ValueError("backbone_layers builds side4video with random weights only")
    spec = with_overrides(
        spec,
        num_frames=num_frames,
        side_dim=side_dim,
        dropout=dropout,
        backbone_layers=backbone_layers,
    )
    if side_layers is not None:  # "all" means every layer: the preset's None
        layers = None if side_layers == "all" else side_layers
        spec = replace(spec, side_layers=layers if layers in (None, "odd") else tuple(layers))
    encoder, identity = builder.build(spec, pretrained, grad_checkpointing)
    model = VideoClassifier(
        encoder,
        num_classes,
        method=method,
        preset=spec,
        backbone_identity=identity,
        dropout=spec.dropout,
    )
    log_built(f"{preset}/{method}", model)
    return model


def count_parameters(name: str, num_classes: int, method: str = "side4video") -> tuple[int, int]:
    """(trainable, total) parameters of preset ``name`` under ``method`` with a K-way head.

    Counted on the meta device: nothing is allocated and no weights are read. The model is built
    once per preset and method; the head's ``(features + 1) x K`` is then exact arithmetic.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    counted = _count_with_one_class(name, method)
    if isinstance(counted, str):  # the method does not build on this preset's backbone
        raise ValueError(counted)
    trainable, total, features = counted
    extra = (features + 1) * (num_classes - 1)
    return trainable + extra, total + extra


@functools.cache
def _count_with_one_class(name: str, method: str) -> tuple[int, int, int] | str:
    """(trainable, total, head input width) with a 1-way head, or the builder's refusal."""
    features: list[int] = []

    def build():
        model = build_model(name, 1, method=method)
        features.append(model.head.in_features)
        return model

    try:
        trainable, total = count_on_meta(build)
    except ValueError as error:
        return str(error)
    return trainable, total, features[0]
