"""Video classifiers: Side4Video and the two baselines it is compared with.

``side4video``    frozen CLIP ViT (no_grad) + trainable side network -> dropout -> Linear head
                  (reference ``train_vision.VideoCLIP`` with ``sim_header: None``).
``linear-probe``  frozen CLIP ViT (no_grad) image embeddings averaged over frames -> Linear head.
``full-finetune`` trainable CLIP ViT image embeddings averaged over frames -> Linear head.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from einops import rearrange
from torch import nn

from s4v_core.backbone import FrozenViT, build_backbone, create_clip
from s4v_core.side import SideNetwork, SideNetworkConfig
from s4v_recognition.presets import METHODS, RecognitionPreset, get_preset

logger = logging.getLogger(__name__)


class SideVideoEncoder(nn.Module):
    """Frozen backbone + side network: frames ``(B, T, 3, H, W)`` -> features ``(B, C)``."""

    def __init__(self, backbone: FrozenViT, side: SideNetwork) -> None:
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

    With a :class:`FrozenViT` the embeddings are computed without grad (linear probe); with a
    trainable open_clip ``VisionTransformer`` every backbone weight trains (full fine-tuning).
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
        if isinstance(self.image_encoder, FrozenViT):
            embeddings = self.image_encoder.encode_image(images)
        else:
            embeddings = self.image_encoder(images)
        return rearrange(embeddings, "(b t) e -> b t e", b=frames.shape[0]).mean(dim=1)


class VideoClassifier(nn.Module):
    """A video encoder, dropout and a linear head: frames ``(B, T, 3, H, W)`` -> logits ``(B, K)``.

    Frames are CLIP-normalised floats. Only :meth:`trainable_state_dict` needs saving: the frozen
    backbone is rebuilt from :attr:`backbone_identity`.
    """

    def __init__(
        self,
        encoder: SideVideoEncoder | FrameMeanEncoder,
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

    def _frozen_prefixes(self) -> list[str]:
        return [f"{name}." for name, m in self.named_modules() if isinstance(m, FrozenViT)]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trained parameters and BatchNorm buffers; nothing of the frozen backbone."""
        frozen = self._frozen_prefixes()
        return {
            key: value
            for key, value in self.state_dict().items()
            if not any(key.startswith(prefix) for prefix in frozen)
        }

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` saved; every key must match, with its shape."""
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unknown = sorted(set(state) - set(expected))
        wrong = [
            f"{key}: got {tuple(state[key].shape)}, expected {tuple(value.shape)}"
            for key, value in expected.items()
            if key in state and state[key].shape != value.shape
        ]
        if missing or unknown or wrong:
            raise ValueError(
                "trainable state does not fit this model: "
                f"missing {missing[:5]}, unknown {unknown[:5]}, wrong shapes {wrong[:5]}"
            )
        self.load_state_dict(state, strict=False)


def _check_image_size(spec: RecognitionPreset, backbone_size: int) -> None:
    if spec.image_size != backbone_size:
        raise ValueError(
            f"preset image_size {spec.image_size} differs from {spec.backbone}'s {backbone_size}"
        )


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
) -> VideoClassifier:
    """Build a video classifier from a named preset.

    Args:
        preset: a key of :data:`s4v_recognition.PRESETS`.
        num_classes: K, the number of classes.
        method: ``side4video``, ``linear-probe`` or ``full-finetune``.
        pretrained: CLIP weights: an open_clip tag (the preset's is ``preset.pretrained``), a local
            file, or None for random weights.
        num_frames: override the preset's frames per clip.
        side_dim: override the preset's side width C.
        grad_checkpointing: recompute activations in backward to save memory.
        dropout: override the preset's dropout before the head.
    """
    spec = get_preset(preset)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    overrides = {"num_frames": num_frames, "side_dim": side_dim, "dropout": dropout}
    spec = replace(spec, **{k: v for k, v in overrides.items() if v is not None})

    if method == "side4video":
        backbone = build_backbone(spec.backbone, pretrained)
        side = SideNetwork(
            SideNetworkConfig(
                side_dim=spec.side_dim,
                head_dim=spec.head_dim,
                side_layers=spec.side_layers,
                grad_checkpointing=grad_checkpointing,
            ),
            backbone_width=backbone.width,
            num_layers=backbone.num_layers,
            patch_size=backbone.patch_size,
            grid=backbone.grid,
            num_frames=spec.num_frames,
        )
        encoder: SideVideoEncoder | FrameMeanEncoder = SideVideoEncoder(backbone, side)
        identity = backbone.identity
        _check_image_size(spec, backbone.image_size)
    elif method == "linear-probe":
        backbone = build_backbone(spec.backbone, pretrained, with_projection=True)
        _check_image_size(spec, backbone.image_size)
        encoder = FrameMeanEncoder(backbone, backbone.embed_dim)
        identity = backbone.identity
    else:
        clip, identity = create_clip(spec.backbone, pretrained)
        _check_image_size(spec, clip.visual.image_size[0])
        visual = clip.visual.train()
        visual.requires_grad_(True)
        encoder = FrameMeanEncoder(visual, visual.output_dim)
        encoder.set_grad_checkpointing(grad_checkpointing)
    model = VideoClassifier(
        encoder,
        num_classes,
        method=method,
        preset=spec,
        backbone_identity=identity,
        dropout=spec.dropout,
    )
    logger.info(
        "built %s/%s: %d trainable parameters",
        preset,
        method,
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    return model
