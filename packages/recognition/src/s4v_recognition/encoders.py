"""One builder per recognition method: a resolved preset -> the method's video encoder.

Each builder takes a resolved :class:`~s4v_recognition.config.RecognitionPreset` and returns the
encoder (frames ``(B, T, 3, H, W)`` -> features ``(B, out_dim)``) with the identity of the CLIP
weights it started from; :data:`s4v_recognition.presets.METHODS` registers them by name. The model
code is in core; what a builder adds is the preset's reading: which backbone, which weights, which
frame count, and the check that the preset's input size is its backbone's.

``side4video``    frozen CLIP ViT (no_grad) + trainable side network (reference
                  ``Recognition/train_vision.py``, ``VideoCLIP`` with ``sim_header: None``).
``linear-probe``  frozen CLIP ViT (no_grad) image embeddings averaged over frames.
``full-finetune`` trainable CLIP ViT image embeddings averaged over frames.
``st-adapter``, ``aim``, ``evl``, ``dist``  the paper's rivals (Table 2), :mod:`s4v_core.methods`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from s4v_core.assembly import check_image_size, side_network_on
from s4v_core.backbone import build_backbone, create_clip, require_open_clip_vit
from s4v_core.backbone_eva import FrozenEVA, image_embed_dim
from s4v_core.backbone_vit import FrozenViT, is_open_clip_vit
from s4v_core.methods.aim import AIMConfig, AIMEncoder
from s4v_core.methods.dist import DiSTConfig, DiSTEncoder
from s4v_core.methods.evl import EVLConfig, EVLEncoder
from s4v_core.methods.st_adapter import STAdapterConfig, STAdapterEncoder
from s4v_core.side import SideNetwork, SideNetworkConfig, SideVideoEncoder
from s4v_core.side_eva import EvaSideNetwork
from s4v_core.tower import FrozenTower
from s4v_recognition.config import Built, RecognitionPreset


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
    backbone = build_backbone(
        spec.backbone,
        pretrained,
        weights_dtype=_DTYPES[spec.backbone_dtype],
        layers=spec.backbone_layers,
    )
    check_image_size(spec.image_size, spec.backbone, backbone.image_size)
    config = SideNetworkConfig(
        side_dim=spec.side_dim,
        head_dim=spec.head_dim,
        side_layers=spec.side_layers,
        grad_checkpointing=grad_checkpointing or spec.grad_checkpointing,
    )
    # The reference's EVA variant is its own side design (Recognition/eva_clip/eva_vit_model.py),
    # chosen by the backbone.
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


def st_adapter(spec: RecognitionPreset, pretrained: str | None, grad_checkpointing: bool) -> Built:
    """ST-Adapter over the preset's CLIP ViT, the paper's main setting (recompute each block)."""
    require_open_clip_vit(spec.backbone, "ST-Adapter")
    clip, identity = create_clip(spec.backbone, pretrained)
    check_image_size(spec.image_size, spec.backbone, clip.visual.image_size[0])
    config = STAdapterConfig(grad_checkpointing=grad_checkpointing)
    return STAdapterEncoder(clip.visual, config, num_frames=spec.num_frames), identity


def aim(spec: RecognitionPreset, pretrained: str | None, grad_checkpointing: bool) -> Built:
    """AIM over the preset's CLIP ViT (``out_dim`` = the ViT width; recompute each block)."""
    require_open_clip_vit(spec.backbone, "AIM")
    clip, identity = create_clip(spec.backbone, pretrained)
    check_image_size(spec.image_size, spec.backbone, clip.visual.image_size[0])
    config = AIMConfig(num_frames=spec.num_frames, grad_checkpointing=grad_checkpointing)
    return AIMEncoder(clip.visual, config), identity


def evl(spec: RecognitionPreset, pretrained: str | None, grad_checkpointing: bool) -> Built:
    """EVL on the preset's frozen CLIP ViT, decoder over every block (recompute its stages)."""
    require_open_clip_vit(spec.backbone, "EVL")
    backbone = build_backbone(spec.backbone, pretrained)
    check_image_size(spec.image_size, spec.backbone, backbone.image_size)
    config = EVLConfig(grad_checkpointing=grad_checkpointing)
    return EVLEncoder(backbone, config, num_frames=spec.num_frames), backbone.identity


def dist(spec: RecognitionPreset, pretrained: str | None, grad_checkpointing: bool) -> Built:
    """DiST on the preset's frozen CLIP ViT (``out_dim`` = the CLIP embedding width)."""
    require_open_clip_vit(spec.backbone, "DiST")
    clip, identity = create_clip(spec.backbone, pretrained, need_projection=False)
    if not is_open_clip_vit(clip.visual):
        raise ValueError(
            f"DiST needs an open_clip VisionTransformer, got {type(clip.visual).__name__} "
            f"({spec.backbone})"
        )
    embed_dim = clip.visual.output_dim
    backbone = FrozenViT(clip.visual, identity)  # frozen: requires_grad False, no_grad forward
    check_image_size(spec.image_size, spec.backbone, backbone.image_size)
    config = DiSTConfig(grad_checkpointing=grad_checkpointing)
    encoder = DiSTEncoder(config, backbone, num_frames=spec.num_frames, embed_dim=embed_dim)
    return encoder, backbone.identity
