"""Video classifiers: a method's video encoder, dropout and a linear head.

The encoders (Side4Video and the baselines it is compared with) are in
:mod:`s4v_recognition.encoders`; :func:`build_model` looks the preset and the method up in the
registry (:mod:`s4v_recognition.presets`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from s4v_core.assembly import TrainableModule, log_built, with_overrides
from s4v_recognition.presets import RecognitionPreset, get_method, get_preset


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
    """
    spec = get_preset(preset)
    builder = get_method(method)
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    spec = with_overrides(spec, num_frames=num_frames, side_dim=side_dim, dropout=dropout)
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
