"""The video encoders of the recognition methods, and one builder per method.

Each builder takes a resolved :class:`~s4v_recognition.presets.RecognitionPreset` and returns the
encoder (frames ``(B, T, 3, H, W)`` -> features ``(B, out_dim)``) with the identity of the CLIP
weights it started from; :data:`s4v_recognition.presets.METHODS` registers them by name.

``side4video``    frozen CLIP ViT (no_grad) + trainable side network
                  (reference ``train_vision.VideoCLIP`` with ``sim_header: None``).
``linear-probe``  frozen CLIP ViT (no_grad) image embeddings averaged over frames.
``full-finetune`` trainable CLIP ViT image embeddings averaged over frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import nn

from s4v_core.assembly import check_image_size, side_network_on
from s4v_core.backbone import FrozenTower, build_backbone, create_clip
from s4v_core.backbone_eva import FrozenEVA, image_embed_dim
from s4v_core.side import SideNetwork, SideNetworkConfig
from s4v_core.side_eva import EvaSideNetwork

if TYPE_CHECKING:
    from s4v_recognition.presets import RecognitionPreset

# An encoder with its ``out_dim`` and the ``{"name", "pretrained", "sha256"}`` of its CLIP weights.
Built = tuple[nn.Module, dict]


class SideVideoEncoder(nn.Module):
    """Frozen backbone + side network: frames ``(B, T, 3, H, W)`` -> features ``(B, C)``."""

    def __init__(self, backbone: FrozenTower, side: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.side = side
        self.out_dim = side.out_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.side.set_grad_checkpointing(enable)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        images = rearrange(frames, "b t c h w -> (b t) c h w")
        return self.side(frames, self.backbone.iter_blocks(images))


class FrameMeanEncoder(nn.Module):
    """CLIP image embedding of every frame, averaged over time: ``(B, T, 3, H, W)`` -> ``(B, E)``.

    With a frozen tower (``FrozenViT``, ``FrozenEVA``) the embeddings are computed without grad
    (linear probe); with a trainable open_clip image tower every weight trains (full fine-tuning).
    """

    def __init__(self, image_encoder: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.out_dim = out_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.image_encoder, "set_grad_checkpointing"):
            self.image_encoder.set_grad_checkpointing(enable)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        images = rearrange(frames, "b t c h w -> (b t) c h w")
        if isinstance(self.image_encoder, FrozenTower):
            embeddings = self.image_encoder.encode_image(images)
        else:
            embeddings = self.image_encoder(images)
        return rearrange(embeddings, "(b t) e -> b t e", b=frames.shape[0]).mean(dim=1)


_DTYPES = {None: None, "bf16": torch.bfloat16}


def side4video(spec: RecognitionPreset, pretrained: str | None, grad_checkpointing: bool) -> Built:
    """Frozen backbone + side network (Side4Video); the EVA side network on an EVA-02 backbone."""
    backbone = build_backbone(spec.backbone, pretrained, weights_dtype=_DTYPES[spec.backbone_dtype])
    check_image_size(spec.image_size, spec.backbone, backbone.image_size)
    config = SideNetworkConfig(
        side_dim=spec.side_dim,
        head_dim=spec.head_dim,
        side_layers=spec.side_layers,
        grad_checkpointing=grad_checkpointing or spec.grad_checkpointing,
    )
    # The reference's EVA variant is its own side design (spec 1.8), chosen by the backbone.
    network = EvaSideNetwork if isinstance(backbone, FrozenEVA) else SideNetwork
    side = side_network_on(network, config, backbone, num_frames=spec.num_frames)
    return SideVideoEncoder(backbone, side), backbone.identity


def linear_probe(
    spec: RecognitionPreset, pretrained: str | None, grad_checkpointing: bool
) -> Built:
    """Frozen CLIP image embeddings averaged over frames (nothing to checkpoint)."""
    backbone = build_backbone(spec.backbone, pretrained, with_projection=True)
    check_image_size(spec.image_size, spec.backbone, backbone.image_size)
    return FrameMeanEncoder(backbone, backbone.embed_dim), backbone.identity


def full_finetune(
    spec: RecognitionPreset, pretrained: str | None, grad_checkpointing: bool
) -> Built:
    """The whole CLIP ViT trains; its image embeddings are averaged over frames."""
    clip, identity = create_clip(spec.backbone, pretrained)
    check_image_size(spec.image_size, spec.backbone, clip.visual.image_size[0])
    visual = clip.visual.train()
    visual.requires_grad_(True)
    encoder = FrameMeanEncoder(visual, image_embed_dim(visual))
    encoder.set_grad_checkpointing(grad_checkpointing)
    return encoder, identity
